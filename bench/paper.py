"""The paper's findings in miniature on the digits: `bash run.sh bench/paper.py` -> docs/paper_findings.md.

  bash run.sh bench/paper.py [--seeds 3] [--steps 600] [--n 64] [--n-large 256]
                             [--workroot DIR] [--out docs] [--only PHASE,...]

Trains every digits model the findings need (`python main.py --mode train`, one fresh process per
model and training seed, resumable: a finished model is never retrained) into --workroot, then
evaluates them in this process, phase by phase, caching every cell (one model seed, one sampler or
likelihood setting) in <workroot>/results.json, so that an interrupted run picks up where it stopped.
After each phase it rewrites <out>/paper_findings.md and its pictures from all cells so far
(`--only ''` only rewrites them).

Models: the default DDPM++ (nf 24, `configs/vp/digits_ddpmpp_continuous.py`) under each SDE and
objective, NCSN++ at the same nf, and EDM (`configs/edm/digits_ddpmpp.py`). Every model trains for
--steps steps at batch 64, except NCSN++, which gets the number of steps that takes the time of
--steps DDPM++ steps (the per-step cost ratio is measured once, before training, and cached):
"equal training time". The phases (docs/paper_findings.md states each claim and its verdict):
  fewstep  DPM-Solver, DPM-Solver++, UniPC, Heun, DDIM at NFE 10/20/50 on VE, VP, sub-VP (and PC1000)
  edm      EDM against the VP default with Heun at NFE 10/20/35, and its bits/dim
  arch     DDPM++ and NCSN++, VE and VP, continuous and discrete objectives
  likelihood  bits/dim of VP, sub-VP and both with likelihood weighting + importance sampling,
           uniform and truncated-normal dequantisation
  ode      the probability-flow ODE: FD-digits/KID and bits/dim against solver tolerance
  table1   Table 1: predictors x P1000/P2000/C2000/PC1000 on VE and VP
Sample quality: FD-digits and KID-digits (the shipped digits classifier's features; KID is the
unbiased kernel MMD^2 of Binkowski et al., so its small-sample values compare across sample sizes,
FD-digits only within one size) of --n samples per seed (--n-large for the cheap few-NFE tables),
from the same prior keys for every cell of a seed. Bits/dim: --bpd-examples test digits, one
dequantisation and one Hutchinson draw per seed, the official RMS error norm.
With the defaults the whole run takes about 1.5 hours on a 2-core CPU (the cost table of
docs/paper_findings.md gives the measured time per phase).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import tqdm

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import paper_report  # noqa: E402
from score_jax import (checkpoints, datasets, dequantization, experiment, likelihood,  # noqa: E402
                       xla_cpu)
from score_jax.images import to_uint8  # noqa: E402
from score_jax.metrics import digits_net, fid, precision_recall  # noqa: E402

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them

BASE = "configs/vp/digits_ddpmpp_continuous.py"
VE = {"training.sde": "vesde", "training.reduce_mean": False, "data.centered": False,
      "model.scale_by_sigma": True, "model.embedding_type": "fourier"}
SUBVP = {"training.sde": "subvpsde"}
SCOREFLOW = {"training.likelihood_weighting": True, "training.importance_weighting": True}
DISCRETE = {"training.continuous": False}
# The official discrete VE configs embed the noise level with sinusoids, the continuous ones with
# random Fourier features.
VE_DISCRETE = {**VE, **DISCRETE, "model.embedding_type": "positional"}
NCSNPP = {"model.fir": True, "model.progressive_input": "residual"}
# name -> (config file, overrides, architecture); every name trains --seeds times.
MODELS: dict[str, tuple[str, dict, str]] = {
    "vp": (BASE, {}, "DDPM++"),
    "ve": (BASE, VE, "DDPM++"),
    "subvp": (BASE, SUBVP, "DDPM++"),
    "vp_lw": (BASE, SCOREFLOW, "DDPM++"),
    "subvp_lw": (BASE, {**SUBVP, **SCOREFLOW}, "DDPM++"),
    "vp_disc": (BASE, DISCRETE, "DDPM++"),
    "ve_disc": (BASE, VE_DISCRETE, "DDPM++"),
    "ncsn_vp": (BASE, NCSNPP, "NCSN++"),
    "ncsn_ve": (BASE, {**VE, **NCSNPP}, "NCSN++"),
    "ncsn_vp_disc": (BASE, {**DISCRETE, **NCSNPP}, "NCSN++"),
    "ncsn_ve_disc": (BASE, {**VE_DISCRETE, **NCSNPP}, "NCSN++"),
    "edm": ("configs/edm/digits_ddpmpp.py", {}, "DDPM++"),
}

# Table 1: predictor rows (config.sampling fields) and columns (steps N, corrector).
PREDICTORS = {"reverse diffusion": dict(predictor="reverse_diffusion"),
              "ancestral": dict(predictor="ancestral_sampling"),
              "Euler-Maruyama": dict(predictor="euler_maruyama"),
              "probability flow": dict(predictor="reverse_diffusion", probability_flow=True)}
COLUMNS = {"P1000": (1000, "none"), "P2000": (2000, "none"), "PC1000": (1000, "langevin")}
C2000 = dict(method="pc", predictor="none", corrector="langevin", num_scales=2000)
PC1000 = dict(method="pc", predictor="reverse_diffusion", corrector="langevin", num_scales=1000)
FAST = {"DPM-Solver": dict(method="dpm_solver"), "DPM-Solver++": dict(method="dpm_solver++"),
        "UniPC": dict(method="unipc"), "Heun": dict(method="heun", s_churn=0.0),
        "DDIM": dict(method="ddim")}
FAST_NFE = (10, 20, 50)
EDM_SAMPLERS = {"Heun, NFE 10": dict(method="heun", nfe=10, s_churn=0.0),
                "Heun, NFE 20": dict(method="heun", nfe=20, s_churn=0.0),
                "Heun, NFE 35": dict(method="heun", nfe=35, s_churn=0.0),
                "stochastic Heun (S_churn 10), NFE 20": dict(method="heun", nfe=20, s_churn=10.0)}
DEFAULT_SAMPLER = dict(method="heun", nfe=20, s_churn=10.0)  # the quick start's
ODE_TOLS = (1e-2, 1e-3, 1e-4, 1e-5)
BPD_TOL = 1e-3   # bits/dim of the likelihood, arch and EDM tables (the ode phase checks it)
PHASES = ("fewstep", "edm", "arch", "likelihood", "ode", "table1")


def table1_sampler(row: str, column: str) -> dict:
    """config.sampling fields (and num_scales) of one Table 1 cell."""
    if column == "C2000":
        return C2000
    steps, corrector = COLUMNS[column]
    return {"method": "pc", "corrector": corrector, "num_scales": steps,
            "probability_flow": False, **PREDICTORS[row]}


def load_config(name: str, seed: int):
    """The config of model `name` at training seed `seed` (its file, then its overrides)."""
    path, fields, _ = MODELS[name]
    config = importlib.import_module(path[:-3].replace("/", ".")).get_config()
    for dotted, value in {**fields, "seed": seed}.items():
        *sections, leaf = dotted.split(".")
        node = config
        for s in sections:
            node = node[s]
        node[leaf] = value
    return config


class Runner:
    """Trains, loads and evaluates the models; every result lands in results.json as it comes."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.root = pathlib.Path(args.workroot)
        self.root.mkdir(parents=True, exist_ok=True)
        self.file = self.root / "results.json"
        self.results: dict[str, Any] = (json.loads(self.file.read_text()) if self.file.exists()
                                        else {"cells": {}, "train_seconds": {}, "phase_seconds": {}})
        self.reference = digits_net.digits_reference_stats("train")
        self.test_images = digits_net.digits_split("test")[0][:args.bpd_examples]
        self._states: dict[tuple[str, int], Any] = {}
        self._exps: dict[str, Any] = {}
        self._samplers: dict[str, Any] = {}
        self._lock = threading.Lock()   # trainings finish in parallel threads

    def save(self) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True))
        os.replace(tmp, self.file)   # a kill mid-write never leaves half a results file

    # ------------------------------------------------------------------ training

    def steps(self, name: str) -> int:
        """Training steps of model `name`: --steps, or NCSN++'s equal-time share of them."""
        if MODELS[name][2] == "DDPM++":
            return self.args.steps
        if "step_cost_ratio" not in self.results:
            self.results["step_cost_ratio"] = _step_cost_ratio()
            self.save()
        return max(100, int(round(self.args.steps / self.results["step_cost_ratio"])))

    def workdir(self, name: str, seed: int) -> pathlib.Path:
        return self.root / "models" / f"{name}_seed{seed}"

    def train(self, name: str, seed: int) -> None:
        """Train model `name` at `seed` to its step count with main.py unless it is there."""
        workdir, steps = self.workdir(name, seed), self.steps(name)
        if steps in checkpoints.snapshot_steps(workdir / "checkpoints"):
            return
        path, fields, _ = MODELS[name]
        overrides = {**fields, "seed": seed, "training.n_iters": steps,
                     "training.snapshot_freq": steps, "training.snapshot_sampling": False,
                     "training.snapshot_freq_for_preemption": 200}
        cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / path),
               "--workdir", str(workdir), "--mode", "train",
               *(f"--config.{k}={v}" for k, v in overrides.items())]
        start = time.perf_counter()
        # The seeds of a model run one program: the persistent cache compiles it once.
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   JAX_COMPILATION_CACHE_DIR=str(self.root / "jax_cache"))
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"[bench/paper] training {name} seed {seed} failed (exit code "
                             f"{out.returncode}):\n{out.stderr[-3000:]}")
        with self._lock:
            self.results["train_seconds"][f"{name}|{seed}"] = time.perf_counter() - start
            self.save()

    def state(self, name: str, seed: int):
        """The final training state (EMA parameters used) of model `name` at `seed`."""
        if (name, seed) not in self._states:
            config = load_config(name, seed)
            manager = checkpoints.open_manager(self.workdir(name, seed) / "checkpoints",
                                               snapshot_every=self.steps(name), read_only=True)
            target = experiment.init_state(config, self.exp(name), abstract=True)
            self._states[(name, seed)] = checkpoints.restore_step(
                manager, self.steps(name), target).state
            manager.close()
        return self._states[(name, seed)]

    def exp(self, name: str):
        if name not in self._exps:
            self._exps[name] = experiment.build(load_config(name, 0))
        return self._exps[name]

    # ------------------------------------------------------------------ cells

    def seeds(self) -> range:
        return range(1, self.args.seeds + 1)

    def values(self, key: str, metric: str) -> list[float] | None:
        """Per-seed values of one cell's metric (None when some seed is missing)."""
        cells = self.results["cells"]
        got = [cells.get(f"{key}|{s}", {}).get(metric) for s in self.seeds()]
        return None if any(v is None for v in got) else got

    def sample_cell(self, name: str, sampler: dict, n: int, label: str) -> None:
        """Sample quality of `n` samples per seed of model `name` under the sampler fields."""
        for seed in self.seeds():
            key = f"samples|{name}|{label}|n{n}|{seed}"
            if key in self.results["cells"]:
                continue
            config = load_config(name, seed)
            fields = dict(sampler)
            if "num_scales" in fields:
                config.model.num_scales = fields.pop("num_scales")
            config.sampling.update(fields)
            cache = f"{name}|{label}|{n}"
            if cache not in self._samplers:  # one compiled program for all seeds
                exp = experiment.build(config)
                self._samplers[cache] = experiment.get_sampler(config, exp.sde, exp.sampling_eps,
                                                               exp.model, n)
            state = self.state(name, seed)
            start = time.perf_counter()
            x, nfe = self._samplers[cache](jax.random.PRNGKey(seed), state.params_ema,
                                           state.model_state)
            seconds = time.perf_counter() - start
            images = to_uint8(x)
            self.results["cells"][key] = dict(self.quality(images), nfe=nfe, seconds=seconds)
            if seed == 1:
                np.save(self.root / "grids" / f"{_safe(key)}.npy", images[:8], allow_pickle=False)
            self.save()

    def quality(self, images: np.ndarray) -> dict[str, float]:
        """FD-digits, KID-digits, precision and recall of uint8 samples [N, 8, 8, 1]."""
        out = digits_net.digits_outputs(images)
        mu, sigma = fid.mean_cov(out.features)
        ref = self.reference
        p, r = precision_recall.precision_recall(ref.pool_3, out.features)
        return {"fd": fid.frechet_distance(mu, sigma, ref.mu, ref.sigma),
                "kid": fid.kernel_inception_distance(out.features, ref.pool_3),
                "precision": p, "recall": r}

    def bpd_cell(self, name: str, dequant: str, tol: float, label: str) -> None:
        """Bits/dim of the test digits (one dequantisation draw) per seed of model `name`."""
        for seed in self.seeds():
            key = f"bpd|{name}|{label}|{seed}"
            if key in self.results["cells"]:
                continue
            config, exp = load_config(name, seed), self.exp(name)
            state = self.state(name, seed)
            score_fn = experiment.get_score_fn(config, exp.sde, exp.model, state.params_ema,
                                               state.model_state)
            rng = np.random.default_rng([seed, 0xB9D])
            if dequant == "uniform":
                x = ((self.test_images + rng.random(self.test_images.shape)) / 256.0)
                x, correction = x.astype(np.float32), 0.0
            else:
                x, log_q = dequantization.dequantize_truncated_normal(self.test_images, rng)
                correction = dequantization.bpd_correction(log_q, int(np.prod(x.shape[1:])))
            start = time.perf_counter()
            res = likelihood.bpd(jax.random.PRNGKey(seed), exp.sde, score_fn,
                                 datasets.get_data_scaler(config.data.centered)(x),
                                 centered=config.data.centered, rtol=tol, atol=tol,
                                 error_control="rms")
            bpd = np.asarray(res.bpd, np.float64) + correction
            self.results["cells"][key] = dict(bpd=float(bpd.mean()), nfe=int(res.nfe),
                                              seconds=time.perf_counter() - start)
            self.save()


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def _step_cost_ratio(repeats: int = 5, steps: int = 20) -> float:
    """Median seconds per train step of NCSN++ over DDPM++ (the VP configs), measured alternately."""
    import jax.numpy as jnp

    fns = {}
    for name in ("vp", "ncsn_vp"):
        config = load_config(name, 0)
        exp = experiment.build(config)
        step = jax.jit(experiment.get_train_step(config, exp.sde, exp.model, exp.optimizer))
        state = experiment.init_state(config, exp)
        x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 1)), jnp.float32)
        state, _ = step(state, x)   # compile
        fns[name] = (step, state, x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (step, state, x) in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                state, metrics = step(state, x)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / steps)
    ratio = float(np.median(times["ncsn_vp"]) / np.median(times["vp"]))
    print(f"[bench/paper] NCSN++ / DDPM++ seconds per train step: {ratio:.2f}", flush=True)
    return ratio


# ---------------------------------------------------------------------- phases

def phase_models(phase: str) -> list[str]:
    """The models a phase evaluates."""
    return {"fewstep": ["ve", "vp", "subvp"], "edm": ["edm", "vp"],
            "arch": ["vp", "ve", "vp_disc", "ve_disc", "ncsn_vp", "ncsn_ve", "ncsn_vp_disc",
                     "ncsn_ve_disc"],
            "likelihood": ["vp", "subvp", "vp_lw", "subvp_lw"], "ode": ["vp"],
            "table1": ["ve", "vp"]}[phase]


def phase_cells(runner: Runner, phase: str) -> list[Callable[[], None]]:
    """The cells of one phase, each a call that computes its missing seeds."""
    a, cells = runner.args, []

    def samples(name, sampler, n, label):
        cells.append(functools.partial(runner.sample_cell, name, sampler, n, label))

    def bpd(name, dequant, tol):
        cells.append(functools.partial(runner.bpd_cell, name, dequant, tol, f"{dequant} {tol:g}"))

    for name in phase_models(phase):
        if phase == "fewstep":
            samples(name, PC1000, a.n, "PC1000")
            for solver, fields in FAST.items():
                for nfe in FAST_NFE:
                    samples(name, dict(fields, nfe=nfe), a.n, f"{solver} {nfe}")
        elif phase == "edm":
            for label, sampler in EDM_SAMPLERS.items():
                samples(name, sampler, a.n_large, label)
            bpd(name, "uniform", BPD_TOL)
        elif phase == "arch":
            samples(name, DEFAULT_SAMPLER, a.n_large, "default")
        elif phase == "likelihood":
            for dequant in ("uniform", "truncated_normal"):
                bpd(name, dequant, BPD_TOL)
        elif phase == "ode":
            for tol in ODE_TOLS:
                samples(name, dict(method="ode", ode_rtol=tol, ode_atol=tol), a.n_large,
                        f"ode {tol:g}")
                bpd(name, "uniform", tol)
        elif phase == "table1":
            samples(name, C2000, a.n, "C2000")
            for column in COLUMNS:
                for row in PREDICTORS:
                    samples(name, table1_sampler(row, column), a.n, table1_label(row, column))
    return cells


def table1_label(row: str, column: str) -> str:
    """Cell label; reverse diffusion's PC1000 is the few-step phase's 'PC1000' (one cell)."""
    return "PC1000" if (row, column) == ("reverse diffusion", "PC1000") else f"{row} {column}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per model")
    parser.add_argument("--steps", type=int, default=600, help="DDPM++ training steps (batch 64)")
    parser.add_argument("--n", type=int, default=64, help="samples per seed, Table 1 and few-step")
    parser.add_argument("--n-large", type=int, default=256,
                        help="samples per seed, the EDM, architecture and ODE tables")
    parser.add_argument("--train-jobs", type=int, default=2, help="trainings run at once")
    parser.add_argument("--bpd-examples", type=int, default=150, help="test digits for bits/dim")
    parser.add_argument("--workroot", default=str(ROOT / ".paper_work"),
                        help="trained models and cached results (reused when run again)")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--only", default=",".join(PHASES), help="phases to run, in this order")
    args = parser.parse_args()
    phases = [p for p in args.only.split(",") if p]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"[bench/paper] unknown phases {unknown}; valid: {list(PHASES)}")
    runner = Runner(args)
    for sub in ("grids", "models"):
        (runner.root / sub).mkdir(exist_ok=True)
    runner.results["settings"] = {k: v for k, v in vars(args).items() if k not in ("workroot", "out")}
    runner.results["machine"] = f"{os.cpu_count()} cores, {_cpu_name()}, jax {jax.__version__}"
    needed = sorted({m for p in phases for m in phase_models(p)}, key=list(MODELS).index)
    jobs = [(name, seed) for name in needed for seed in runner.seeds()]
    for name in needed:
        runner.steps(name)   # measures NCSN++'s step cost before any training loads the machine
    start = time.perf_counter()
    # Two trainings at a time: each spends ~20 s of mostly single-threaded start-up and
    # compilation, which the other's training steps overlap.
    with concurrent.futures.ThreadPoolExecutor(args.train_jobs) as pool:
        done = pool.map(lambda job: runner.train(*job), jobs)
        for _ in tqdm.tqdm(done, total=len(jobs), desc="training", unit="model"):
            pass
    _add_seconds(runner, "training", time.perf_counter() - start)
    for phase in phases:
        start = time.perf_counter()
        print(f"[bench/paper] phase {phase}", flush=True)
        for cell in tqdm.tqdm(phase_cells(runner, phase), desc=phase, unit="cell"):
            cell()
        _add_seconds(runner, phase, time.perf_counter() - start)
        paper_report.write(runner, pathlib.Path(args.out))
    paper_report.write(runner, pathlib.Path(args.out))   # also with --only '' (re-render)
    print(f"[bench/paper] wrote {pathlib.Path(args.out) / 'paper_findings.md'}", flush=True)


def _add_seconds(runner: Runner, phase: str, seconds: float) -> None:
    """Wall seconds spent in a phase, summed over invocations (a resumed run adds to them)."""
    spent = runner.results["phase_seconds"]
    spent[phase] = spent.get(phase, 0.0) + seconds
    runner.save()


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
