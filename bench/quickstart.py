"""The quick start's quality per second: `main.py --mode train_eval` of config variants, side by side.

  python bench/quickstart.py [--variants before,default] [--repeats 1] [--out bench/results]
      [--variant NAME=--config.model.nf=16,--config.training.n_iters=800 ...]

Each variant is the README's main job (the default digits config, training then evaluation) run as
a fresh `python main.py` process in its own workdir, so the wall time counts what a user waits for
after installation: start-up, compilation, training, snapshots, test loss, bits/dim and the
evaluation samples with their FD-digits. With --repeats > 1 the variants alternate, so drifting load
hits all of them alike, and the table gives the median. Results: a markdown table on stdout and in
`<out>/quickstart.md`, each variant's evaluation sample grid as `<out>/quickstart_<name>.png`.

Built-in variants:
  before   the quick start as it was before the speed work: XLA's default CPU kernels (YNNPACK),
           EDM Heun sampler, nf 32 BigGAN blocks with dropout 0.1, 1000 steps at batch 64, lr 1e-3
  default  the default config as it is now, with score_jax's XLA:CPU flags
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEFORE = ["--config.model.nf=32", "--config.model.resblock_type=biggan", "--config.model.dropout=0.1",
          "--config.training.n_iters=1000", "--config.training.batch_size=64",
          "--config.training.snapshot_freq=500", "--config.eval.begin_ckpt=2", "--config.eval.end_ckpt=2",
          "--config.optim.lr=0.001", "--config.optim.warmup=100", "--config.model.ema_rate=0.999",
          "--config.sampling.method=heun", "--config.sampling.nfe=20", "--config.sampling.s_churn=10.",
          "--config.eval.bpd_error_control=per_part", "--config.eval.bpd_rtol=0.001",
          "--config.eval.bpd_atol=0.001"]
VARIANTS = {"before": ({"SCORE_JAX_XLA_DEFAULTS": "0"}, BEFORE), "default": ({}, [])}
COLUMNS = ("wall_s", "loss", "bpd", "bpd_nfe", "bpd_seconds", "fd_digits", "is_digits")


def run_variant(name: str, env_extra: dict, overrides: list[str], workroot: pathlib.Path) -> dict:
    """One fresh main.py train_eval run: wall seconds and the last checkpoint's evaluation summary."""
    workdir = workroot / name
    shutil.rmtree(workdir, ignore_errors=True)
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, str(ROOT / "main.py"), "--workdir", str(workdir), "--mode", "train_eval",
           *overrides]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"[bench/quickstart] {name} failed (code {out.returncode}):\n"
                         f"{out.stderr[-3000:]}")
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    last = summary[max(summary, key=lambda k: summary[k]["step"])]
    grid = sorted((workdir / "eval").glob("ckpt_*/samples.png"))
    return dict(last, wall_s=wall, grid=str(grid[-1]) if grid else "")


def _parse_variant(text: str) -> tuple[str, tuple[dict, list[str]]]:
    name, _, flags = text.partition("=")
    if not name or not flags:
        raise SystemExit(f"--variant {text!r}: write NAME=--config.a.b=1,--config.c.d=2")
    return name, ({}, flags.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="before,default")
    parser.add_argument("--variant", action="append", default=[], help="NAME=--config.x=v,...")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    variants = dict(VARIANTS)
    variants.update(_parse_variant(v) for v in args.variant)
    names = [n for n in args.variants.split(",") if n] + [_parse_variant(v)[0] for v in args.variant]
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; built in: {list(VARIANTS)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="quickstart_") as tmp:
        for r in range(args.repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                env_extra, overrides = variants[name]
                res = run_variant(name, env_extra, overrides, pathlib.Path(tmp))
                print(f"[bench/quickstart] {name} (repeat {r + 1}): "
                      + ", ".join(f"{c} {res.get(c, float('nan')):.4g}" for c in COLUMNS), flush=True)
                if res["grid"]:
                    shutil.copy(res["grid"], out / f"quickstart_{name}.png")
                results[name].append(res)
    lines = ["| variant | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in names:
        med = [statistics.median(r.get(c, float("nan")) for r in results[name]) for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in med) + " |")
    lines.append(f"\n({args.repeats} repeat(s), median; {os.cpu_count()} cores; overrides: "
                 + "; ".join(f"{n}: {' '.join(variants[n][1]) or '-'}" for n in names) + ")")
    text = "\n".join(lines)
    print(text)
    (out / "quickstart.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
