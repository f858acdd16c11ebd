"""Training-iterator throughput (images/s) from PNG and JPEG folders, by image size and workers.

  bash run.sh bench/data.py [--sizes 32,64,256] [--repeats 3] [--out bench/results]

Makes synthetic image folders (PNG and JPEG, smooth random colours) at each size in a temporary
directory, prepares each once as `data.dataset='folder'` does (array_record), and times the
training iterator as the train loop consumes it: `next(it)`, the data scaler and the host->device
put (`parallel.global_batch`). Rows per size:
  - PNG folder / JPEG folder: every read decodes the prepared record, as for a data set larger
    than the in-memory cache (512 MB decoded);
  - prepared, in memory: the decoded cache (data sets that fit it, e.g. CIFAR-10), from the PNG
    folder.
Columns: today's default (in the training process, 2 prefetch threads), then 1, 2 and N = cores
worker processes (`data.num_workers`), and grain's `mp_prefetch` with 2 processes over the same
batch function (the library alternative). Each cell: its iterator started and warmed up once,
then `repeats` timed runs of consecutive batches (buffered batches drained first), the settings
of a row alternated run by run; the median and the spread (min-max) are reported, for images/s
and for images per CPU-second of this process and its workers (less sensitive to other load).
Writes <out>/data.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import multiprocessing
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from score_jax import datasets, parallel, reporting  # noqa: E402

IMAGES = {32: 1024, 64: 512, 256: 192}      # images per folder, by size
BATCH = {32: 128, 64: 128, 256: 32}          # global batch, by size
TIMED_IMAGES = {32: 3072, 64: 1536, 256: 192}  # images per timed run, by size


def _make_folder(folder: pathlib.Path, size: int, count: int, suffix: str) -> None:
    """`count` smooth random RGB images size x size: upsampled noise, so codecs compress as usual."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(size)
    coarse = max(size // 4, 2)
    for i in range(count):
        noise = rng.integers(0, 256, (coarse, coarse, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((size, size), Image.BILINEAR).save(folder / f"{i:05d}{suffix}")


def _sources(root: pathlib.Path, size: int) -> tuple[dict, dict]:
    """({row: random-access source}, {suffix: prepare images/s}) for one image size."""
    sources, prepare_rate = {}, {}
    for suffix, label in ((".png", "PNG folder"), (".jpg", "JPEG folder")):
        folder = root / f"{size}{suffix}"
        _make_folder(folder, size, IMAGES[size], suffix)
        t0 = time.perf_counter()
        cached = datasets.open_source("folder", "train", root / "tfds", path=str(folder),
                                      eval_fraction=0.0)
        prepare_rate[label] = IMAGES[size] / (time.perf_counter() - t0)
        sources[label] = cached.source  # below the cache: each read decodes the record
        if suffix == ".png":
            sources["prepared, in memory"] = cached
    return sources, prepare_rate


def _grain_batches(pipe: datasets.Pipeline, batch: int, start: int, workers: int):
    """grain's worker processes over the same batch function: a checkpointable iterator."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags, also in the main process
        flags.FLAGS.mark_as_parsed()
    steps = grain.MapDataset.range(start, start + 10 ** 6)
    # One batch at a time per worker, as ours: grain's default is 16 threads, 500 buffered.
    ds = steps.map(functools.partial(_batch_of, pipe, batch)).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    return iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)))


def _batch_of(pipe: datasets.Pipeline, batch: int, step: int) -> dict:
    return datasets.train_batch(pipe, step, batch)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live worker processes."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for child in multiprocessing.active_children():
        try:
            fields = pathlib.Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


class _Cell:
    """One (source, setting): a live iterator, and the timed runs of it."""

    def __init__(self, pipe: datasets.Pipeline, batch: int, setting: str, start: int):
        self.batch, self.times, self.cpu = batch, [], []  # images/s, images per CPU-s
        if setting == "grain 2":
            self.it, self.ahead = _grain_batches(pipe, batch, start, 2), 2 * 3  # see there
        else:
            workers = 0 if setting == "threads" else int(setting)
            self.it = datasets.TrainIterator(pipe, batch, 0, 1, "folder", prefetch=2,
                                             workers=workers)
            self.it.set_state({**self.it.get_state(), "step": start})
            self.ahead = max(2, 2 * workers)  # as TrainIterator

    def run(self, count: int, consume) -> tuple[float, float]:
        """(wall, CPU) seconds for `count` batches, after draining those buffered while idle."""
        for _ in range(self.ahead + 1):
            consume(next(self.it))
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        for _ in range(count):
            consume(next(self.it))
        return time.perf_counter() - t0, _cpu_seconds() - cpu0

    def close(self) -> None:
        getattr(self.it, "close", lambda: None)()


def _measure_row(pipe, size: int, settings: list[str], repeats: int, consume, bar) -> dict:
    """{setting: ([images/s], [images per CPU-s]) per run}: settings alternated, order rotated."""
    batch = BATCH[size]
    count = max(4, TIMED_IMAGES[size] // batch)
    cells = {s: _Cell(pipe, batch, s, 10 ** 5 * k) for k, s in enumerate(settings)}
    try:
        for cell in cells.values():  # start the workers, compile the device put
            cell.run(1, consume)
        for rep in range(repeats):
            order = settings[rep % len(settings):] + settings[:rep % len(settings)]
            for s in order:
                wall, cpu = cells[s].run(count, consume)
                cells[s].times.append(count * batch / wall)
                cells[s].cpu.append(count * batch / cpu)
                bar.update()
    finally:
        for cell in cells.values():
            cell.close()
    return {s: (c.times, c.cpu) for s, c in cells.items()}


def _machine() -> str:
    """CPU model name (from /proc/cpuinfo) and core count."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def _cell_text(rates: list[float]) -> str:
    return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cores = os.cpu_count() or 1
    settings = ["threads"] + [str(w) for w in sorted({1, 2, cores})] + ["grain 2"]
    mesh = parallel.make_mesh()
    scaler = datasets.get_data_scaler(True)

    def consume(batch: dict) -> None:  # what the train loop does with each batch
        parallel.global_batch(scaler(batch["image"]), mesh).block_until_ready()

    load_before = os.getloadavg()
    lines, cpu_lines, prepared = [], [], []
    with tempfile.TemporaryDirectory() as tmp, reporting.Progress(
            len(sizes) * 3 * args.repeats * len(settings), desc="data bench", unit="run") as bar:
        for size in sizes:
            sources, prepare_rate = _sources(pathlib.Path(tmp), size)
            prepared.append(f"{size} px: " + ", ".join(f"{k} {v:.0f} images/s"
                                                       for k, v in prepare_rate.items()))
            for label, source in sources.items():
                preprocess = functools.partial(datasets.preprocess_image, "folder")
                pipe = datasets.Pipeline(source, preprocess, size, 0, random_flip=True,
                                         uniform_dequantization=False)
                rates = _measure_row(pipe, size, settings, args.repeats, consume, bar)
                for table, part in ((lines, 0), (cpu_lines, 1)):
                    table.append(f"| {size} | {label} | " + " | ".join(
                        _cell_text(rates[s][part]) for s in settings) + " |")
                print(lines[-1], cpu_lines[-1], sep="\n", flush=True)
    header = ["in process, 2 threads"] + [f"{s} worker{'s' * (s != '1')}"
                                          + (" (N)" if s == str(cores) else "")
                                          for s in settings[1:-1]] + ["grain, 2 workers"]
    text = "\n".join([
        "# bench/data.py: training iterator images/s", "",
        f"{_machine()}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (the machine "
        f"is shared: cells are medians of {args.repeats} alternated runs, min-max in brackets).",
        "Batch 128 at 32 and 64 px, 32 at 256 px; next(it) + scaler + host->device put.", "",
        "| px | source | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header), *lines, "",
        "Images per CPU-second (this process and its workers; the cost, less sensitive to the "
        "load of others than images/s):", "",
        "| px | source | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header), *cpu_lines, "",
        "Preparing a folder once (decode, check, write array_record): " + "; ".join(prepared) + ".",
        ""])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
