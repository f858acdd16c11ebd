"""EDM's formulation against the VP default at equal training time on the digits, and its NFE claim.

  bash run.sh bench/paper.py [--n 512] [--keys 3] [--out bench/results] [--workroot DIR]

Trains `configs/edm/digits_ddpmpp.py` and the VP default `configs/vp/digits_ddpmpp_continuous.py`
(the same DDPM++ network, optimiser, batch and steps, so the same cost per step) with
`python main.py --mode train`, one fresh process each, and reports both wall times, so that "equal
training time" is measured, not assumed. Then it samples the final EMA parameters of each with
EDM's deterministic Heun at NFE 10 / 20 / 35 and with the VP default's own sampler (stochastic
Heun, S_churn 10, NFE 20), `--keys` sampling keys of `--n` samples each, and scores them by
FD-digits (the shipped digits classifier's Frechet distance to the train split; lower is better).
The table gives the median over keys and the min-max spread; EDM's claim (better samples at fewer
NFE) is judged from it. Writes <out>/paper_edm.md and a PNG grid per model.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.edm import digits_ddpmpp as edm_config  # noqa: E402
from configs.vp import digits_ddpmpp_continuous as vp_config  # noqa: E402
from score_jax import checkpoints, experiment, images, sample_quality, xla_cpu  # noqa: E402

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them

MODELS = {"EDM": (edm_config, "configs/edm/digits_ddpmpp.py"),
          "VP (default)": (vp_config, "configs/vp/digits_ddpmpp_continuous.py")}
# label -> config.sampling overrides
SAMPLERS = {"Heun, NFE 10": dict(method="heun", nfe=10, s_churn=0.0),
            "Heun, NFE 20": dict(method="heun", nfe=20, s_churn=0.0),
            "Heun, NFE 35": dict(method="heun", nfe=35, s_churn=0.0),
            "stochastic Heun S_churn 10, NFE 20 (VP default's)": dict(method="heun", nfe=20,
                                                                        s_churn=10.0)}


def train(name: str, config_path: str, workdir: pathlib.Path) -> float:
    """Wall seconds of a fresh `main.py --mode train` of the config into workdir."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / config_path),
           "--workdir", str(workdir), "--mode", "train",
           "--config.training.snapshot_sampling=False"]
    start = time.perf_counter()
    # main.py's own progress bar (rate, ETA) shows on stderr.
    out = subprocess.run(cmd, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"[bench/paper] training {name} failed (exit code {out.returncode}).")
    return time.perf_counter() - start


def fd_digits(config, workdir: pathlib.Path, sampler: dict, n: int, keys: int,
              grid: pathlib.Path | None) -> list[float]:
    """FD-digits of n samples per sampling key (keys 0..keys-1) from the final EMA parameters."""
    config = config.get_config()
    config.sampling.update(sampler)
    exp = experiment.build(config)
    manager = checkpoints.open_manager(workdir / "checkpoints",
                                       snapshot_every=config.training.snapshot_freq, read_only=True)
    state = checkpoints.restore_step(manager, max(manager.all_steps()),
                                     experiment.init_state(config, exp, abstract=True)).state
    manager.close()
    sample = experiment.get_sampler(config, exp.sde, exp.sampling_eps, exp.model, n)
    scorer = sample_quality.get_scorer(config)
    values = []
    for k in range(keys):
        x, _ = sample(jax.random.PRNGKey(k), state.params_ema, state.model_state)
        values.append(sample_quality.score_samples(scorer, images.to_uint8(x))["fd_digits"])
        if grid is not None and k == 0:
            grid.write_bytes(images.png_bytes(images.image_grid(x[:64])))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--workroot", default="", help="reuse trained workdirs here (skip training)")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workroot = pathlib.Path(args.workroot or tempfile.mkdtemp(prefix="paper_"))
    walls = {}
    for name, (_, path) in MODELS.items():
        workdir = workroot / name.split()[0]
        if not (workdir / "checkpoints").exists():
            walls[name] = train(name, path, workdir)
            print(f"[bench/paper] trained {name} in {walls[name]:.0f} s -> {workdir}", flush=True)
    rows = []
    cells = [(label, sampler, name, config) for label, sampler in SAMPLERS.items()
             for name, (config, _) in MODELS.items()]
    for label, sampler, name, config in tqdm.tqdm(cells, desc="sampling", unit="cell"):
        grid = out / f"paper_{name.split()[0].lower()}.png" if label == "Heun, NFE 35" else None
        fds = fd_digits(config, workroot / name.split()[0], sampler, args.n, args.keys, grid)
        rows.append((label, name, statistics.median(fds), min(fds), max(fds)))
        print(f"[bench/paper] {name:13s} {label:50s} FD-digits median {rows[-1][2]:.2f} "
              f"({min(fds):.2f}-{max(fds):.2f})", flush=True)
    lines = ["| sampler | model | FD-digits (median) | min-max over keys |", "|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f}-{r[4]:.2f} |" for r in rows]
    trained = ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) or f"reused {workroot}"
    lines.append(f"\nTraining wall time (s): {trained}; {args.n} samples x {args.keys} keys; "
                 f"{os.cpu_count()} cores.")
    text = "\n".join(lines)
    print(text)
    (out / "paper_edm.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
