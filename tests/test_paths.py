"""The path layer's writers, which must not rely on append or rename (buckets have neither):
whole-file writes leave no temporary behind, and TensorBoard event files, rewritten whole at each
flush and rolled over, are valid TFRecord streams (CRC32C checked with google-crc32c, the spec's
masking) holding every scalar in order. The gs:// side runs end to end in test_gcs_workdir.py."""

import struct

import google_crc32c
import numpy as np

from score_jax import paths, reporting, safe_files


def _masked(data: bytes) -> int:
    # TFRecord: ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2^32.
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == _masked(header) and body_crc == _masked(body)
        out.append(body)
        pos += 16 + length
    assert pos == len(data)
    return out


def test_event_files_are_valid_tfrecords_in_order_across_roll_overs(tmp_path):
    from tensorboardX.proto import event_pb2
    writer = reporting._EventFile(tmp_path / "tb", roll_bytes=300)
    written = [(step, {"loss": 1.0 / step, "lr": 0.5 * step}) for step in range(1, 21)]
    for step, values in written:
        writer.scalars(step, values)
    files = sorted((tmp_path / "tb").iterdir())
    assert len(files) > 2 and all("tfevents" in f.name for f in files)
    assert not [f for f in files if f.name.startswith(".")]  # no temporary left
    events = [event_pb2.Event.FromString(r) for f in files for r in _records(f.read_bytes())]
    assert events[0].file_version == "brain.Event:2"
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    want = [(s, k, np.float32(v)) for s, values in written for k, v in values.items()]
    assert got == want
    # A file is rewritten whole until it passes roll_bytes: every one but the last is bounded.
    sizes = [f.stat().st_size for f in files]
    assert all(300 <= s < 600 for s in sizes[:-1])


def test_whole_file_writes_replace_and_round_trip(tmp_path):
    target = tmp_path / "d" / "x.npz"
    paths.make_dir(target.parent)
    paths.save_npz(target, {"a": np.arange(3)})
    paths.save_npz(target, {"a": np.arange(5.0), "b": np.eye(2, dtype=np.uint8)})
    back = safe_files.load_npz(target, "test file")
    np.testing.assert_array_equal(back["a"], np.arange(5.0))
    np.testing.assert_array_equal(back["b"], np.eye(2, dtype=np.uint8))
    assert [p.name for p in target.parent.iterdir()] == ["x.npz"]
    assert paths.resolve("~/x") == paths.resolve(str(paths.Path("~/x").expanduser()))
    assert str(paths.resolve("gs://bucket/run")) == "gs://bucket/run"
