"""A damaged record in a prepared data set: one line naming the file and the record, nothing written."""

import pathlib
import shutil

import pytest

from conftest import TINY_MODEL, main_env, run_main
from score_jax import datasets, digits
from score_jax.errors import UserError
from score_jax.record_check import CheckedSource, DamagedRecordError


@pytest.fixture(scope="module")
def damaged_digits(tmp_path_factory):
    """A tfds data dir whose digits train file has bytes flipped inside one record's chunk:
    (data dir, train file, indices of the records that no longer read)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    digits.prepare(data_dir)
    (train_file,) = pathlib.Path(data_dir).rglob("digits-train.array_record-*")
    data = bytearray(train_file.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0x5A
    train_file.write_bytes(bytes(data))
    raw = digits.prepare(data_dir).as_data_source(split="train")
    broken = []
    for i in range(len(raw)):
        try:
            raw[i]
        except Exception:  # noqa: BLE001 - finding the damaged records with the raw reader
            broken.append(i)
    assert 0 < len(broken) < len(raw) // 2, broken  # a few records, not the whole file
    return data_dir, train_file, broken


def test_opening_the_data_set_names_file_and_record(damaged_digits):
    data_dir, train_file, broken = damaged_digits
    with pytest.raises(DamagedRecordError) as err:
        datasets.open_source("digits", "train", data_dir)
    text = str(err.value)
    assert f"record {broken[0]} (record {broken[0]} of file {train_file})" in text
    assert "Delete" in text and "\n" not in text
    datasets.open_source("digits", "eval", data_dir)  # the other split is intact and reads


def test_a_batch_read_names_the_damaged_record_among_good_ones():
    class Source:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if i == 3:
                raise RuntimeError("chunk data hash mismatch")
            return {"i": i}

        def __getitems__(self, indices):
            return [self[i] for i in indices]

    checked = CheckedSource(Source(), "toy", "Prepare it again.")
    assert checked.__getitems__([0, 4]) == [{"i": 0}, {"i": 4}]
    with pytest.raises(DamagedRecordError, match=r"record 3 \(record 3 of file \?\).*hash mismatch"):
        checked.__getitems__([0, 3, 4])
    assert issubclass(DamagedRecordError, UserError)


def test_training_on_a_damaged_data_set_stops_in_one_line_and_writes_nothing(damaged_digits,
                                                                              tmp_path):
    data_dir, train_file, broken = damaged_digits
    env = main_env(tmp_path)
    shutil.copytree(data_dir, env["TFDS_DATA_DIR"])
    workdir = tmp_path / "work"
    out = run_main([f"--workdir={workdir}", *TINY_MODEL, "--config.training.n_iters=2"], env)
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"record {broken[0]}" in errors[0] and train_file.name in errors[0]
    assert not workdir.exists()
