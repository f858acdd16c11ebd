"""score_jax's train step against the official PyTorch score_sde_pytorch on one CPU, side by side.

  python bench/twin.py --official /path/to/score_sde_pytorch --torch_python /path/to/venv/bin/python
      [--configs digits,cifar10] [--steps 5] [--rounds 4] [--warmup 3] [--threads 0]
      [--xla_flags="..."] [--baseline_xla_flags="..."] [--override model.nf=32 ...]

Each side is a long-lived subprocess that builds its own train step for the same config and batch
(score_jax: bench/train_step.py's `config_train_step`, i.e. `train_state.make_train_step` over
`losses`, `optim` and the registry's model, jitted with the state donated; PyTorch: the official
`losses.get_step_fn` with its optimiser manager,
clipping, Adam and EMA, on CPU tensors), warms up, then runs `--steps` steps whenever the parent
asks. The parent alternates the sides for `--rounds` rounds, so drifting load from other processes
hits both alike, and prints the median seconds per step of each side and the ratio
PyTorch / score_jax (> 1: score_jax is faster).

The official code builds two CUDA extensions (op/upfirdn2d, op/fused_act) at import; the worker
replaces `torch.utils.cpp_extension.load` before importing them, so their own pure-torch paths for
CPU tensors run instead. Without `--official` and `--torch_python` (torch is not a dependency of
score_jax) the PyTorch side is skipped with a message. `--baseline_xla_flags` adds a second
score_jax side with exactly these XLA flags, without score_jax's defaults (score_jax/xla_cpu.py;
"" gives XLA's own defaults), to measure flag choices the same way. On a machine loaded by other
processes torch's OpenMP threads wait on each other at every barrier; compare with `--threads 1`
too (the faster torch setting is the fair one).

Configs: 'cifar10' = configs/vp/cifar10_ddpmpp_continuous at batch 8, 'digits' =
configs/vp/digits_ddpmpp_continuous at batch 64 (the official side takes the official CIFAR-10
DDPM++ config with every model / data / optim field set to score_jax's value). `--override
section.field=value` changes a field on both sides (e.g. model.nf=32, the digits width before the
quick-start default became nf 24).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = {"cifar10": ("configs.vp.cifar10_ddpmpp_continuous", 8),
           "digits": ("configs.vp.digits_ddpmpp_continuous", 64)}
OFFICIAL_BASE = "configs.vp.cifar10_ddpmpp_continuous"
SECTIONS = ("model", "data", "optim", "training")


# --------------------------------------------------------------------------- workers


def _serve(step_once, warmup: int) -> None:
    """Warm up, say 'ready', then answer each stdin line 'n' with the n step times as JSON."""
    for _ in range(warmup):
        step_once()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            start = time.perf_counter()
            step_once()
            times.append(time.perf_counter() - start)
        print(json.dumps({"times": times}), flush=True)


def _jax_worker(config_module: str, batch: int, warmup: int, overrides: dict) -> None:
    """score_jax side: the train step of `config_module` at `batch`, jitted, state donated."""
    sys.path.insert(0, str(ROOT / "bench"))
    import jax
    from train_step import config_train_step  # applies score_jax's XLA:CPU defaults

    step, state, x = config_train_step(config_module, batch, overrides)
    step = jax.jit(step, donate_argnums=0)
    holder = {"state": state}

    def step_once():
        holder["state"], metrics = step(holder["state"], x)
        float(metrics["loss"])  # a runner reads the loss, as the official loop does

    _serve(step_once, warmup)


def _config_fields(config_module: str, overrides: dict) -> dict:
    """The JSON-able model / data / optim / training fields of a score_jax config."""
    sys.path.insert(0, str(ROOT / "bench"))
    from train_step import load_config

    config = load_config(config_module, overrides)
    out = {}
    for section in SECTIONS:
        fields = {}
        for key, value in config[section].items():
            value = list(value) if isinstance(value, tuple) else value
            if isinstance(value, (bool, int, float, str, list)):
                fields[key] = value
        out[section] = fields
    return out


def _torch_worker(official: str, fields: dict, batch: int, warmup: int, threads: int) -> None:
    """Official side: losses.get_step_fn of score_sde_pytorch on CPU with score_jax's fields."""
    import importlib

    import torch
    import torch.utils.cpp_extension

    # The CUDA builds are only used for CUDA tensors; on CPU tensors op/ runs its torch code.
    torch.utils.cpp_extension.load = lambda *args, **kwargs: None
    torch.set_num_threads(threads or os.cpu_count())
    # init_scale 0 gives 1e-10-scaled kernels whose products are denormal; XLA flushes them to
    # zero, so torch does too (without this the official step is ~10x slower on CPU).
    torch.set_flush_denormal(True)
    sys.path.insert(0, official)
    config = importlib.import_module(OFFICIAL_BASE).get_config()
    for section, values in fields.items():
        for key, value in values.items():
            if key in config[section]:
                old = config[section][key]
                value = tuple(value) if isinstance(old, tuple) else value
                if type(old) is not type(value):
                    # ConfigDict keeps a field's type; an int field may take score_jax's float.
                    del config[section][key]
                config[section][key] = value
    config.training.batch_size = batch
    config.device = torch.device("cpu")
    losses = importlib.import_module("losses")
    sde_lib = importlib.import_module("sde_lib")
    importlib.import_module("models.ncsnpp")  # registers the model
    mutils = importlib.import_module("models.utils")
    ema_lib = importlib.import_module("models.ema")

    torch.manual_seed(config.seed)
    model = mutils.create_model(config)
    state = dict(optimizer=losses.get_optimizer(config, model.parameters()), model=model,
                 ema=ema_lib.ExponentialMovingAverage(model.parameters(),
                                                      decay=config.model.ema_rate), step=0)
    m, t, d = config.model, config.training, config.data
    sdes = {"vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.subVPSDE}
    sde = sdes[t.sde.lower()](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    step_fn = losses.get_step_fn(sde, train=True,
                                 optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=t.reduce_mean, continuous=t.continuous,
                                 likelihood_weighting=t.likelihood_weighting)
    x = torch.rand(batch, d.num_channels, d.image_size, d.image_size) * 2 - 1

    def step_once():
        float(step_fn(state, x).detach())

    _serve(step_once, warmup)


# --------------------------------------------------------------------------- parent


class Side:
    """A worker subprocess that runs n steps on request and returns their times."""

    def __init__(self, name: str, argv: list, env: dict, cwd: pathlib.Path):
        self.name, self.times = name, []
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, cwd=cwd, text=True)
        self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"[bench/twin] the {self.name} worker exited "
                                 f"(code {self.proc.wait()}); its error is above.")
            if line.startswith("{"):
                return json.loads(line)

    def run(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        self.times += self._read()["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _parse_overrides(items: list[str]) -> dict:
    """['model.nf=32', ...] -> {'model.nf': 32}, values read as JSON where they parse."""
    out = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or path.count(".") != 1:
            raise SystemExit(f"--override: expected section.field=value, got {item!r}.")
        try:
            out[path] = json.loads(text)
        except json.JSONDecodeError:
            out[path] = text
    return out


def _uptime() -> str:
    try:
        return "load average " + " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def _compare(name: str, args, torch_ready: bool) -> None:
    config_module, batch = CONFIGS[name]
    me = str(pathlib.Path(__file__).resolve())
    base = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    overrides = _parse_overrides(args.override)
    common = ["--config_module", config_module, "--batch", str(batch), "--overrides",
              json.dumps(overrides), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    print(f"[bench/twin] {name}: {config_module}, batch {batch}, overrides {overrides}; "
          f"{_uptime()}", flush=True)
    sides = [Side("score_jax", [sys.executable, me, "--worker", "jax", *common],
                  dict(base, XLA_FLAGS=args.xla_flags), ROOT)]
    if args.baseline_xla_flags is not None:
        sides.append(Side("score_jax (baseline flags)",
                          [sys.executable, me, "--worker", "jax", *common],
                          dict(base, XLA_FLAGS=args.baseline_xla_flags,
                               SCORE_JAX_XLA_DEFAULTS="0"), ROOT))
    if torch_ready:
        fields = json.dumps(_config_fields(config_module, overrides))
        sides.append(Side(f"pytorch (official, {args.threads or os.cpu_count()} thr)",
                          [args.torch_python, me, "--worker", "torch", "--official",
                           args.official, "--fields", fields, *common],
                          dict(os.environ, PYTHONPATH=args.official), pathlib.Path(args.official)))
    for r in range(args.rounds):
        # Alternate the order, so a side never always runs right after the same neighbour.
        for side in sides if r % 2 == 0 else sides[::-1]:
            side.run(args.steps)
    for side in sides:
        side.close()
        t = side.times
        print(f"  {side.name:27s} {statistics.median(t):8.4f} s/step (min {min(t):.4f}, max "
              f"{max(t):.4f}, {len(t)} steps)")
    ours = statistics.median(sides[0].times)
    for other in sides[1:]:
        print(f"  ratio {other.name} / score_jax time per step: "
              f"{statistics.median(other.times) / ours:.3f}")
    print(f"  ({_uptime()} at the end; {os.cpu_count()} cores)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="digits,cifar10")
    parser.add_argument("--official", default=None, help="a score_sde_pytorch checkout")
    parser.add_argument("--torch_python", default=None, help="a python with torch installed")
    parser.add_argument("--steps", type=int, default=5, help="steps per side per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--xla_flags", default=os.environ.get("XLA_FLAGS", ""))
    parser.add_argument("--baseline_xla_flags", default=None)
    parser.add_argument("--override", action="append", default=[],
                        help="section.field=value for both sides (repeatable), e.g. model.nf=32")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--config_module", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fields", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "jax":
        return _jax_worker(args.config_module, args.batch, args.warmup, json.loads(args.overrides))
    if args.worker == "torch":
        return _torch_worker(args.official, json.loads(args.fields), args.batch, args.warmup,
                             args.threads)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; valid names are {list(CONFIGS)}.")
    torch_ready = bool(args.official and args.torch_python)
    if torch_ready and not (pathlib.Path(args.official) / "losses.py").is_file():
        raise SystemExit(f"--official: {args.official} has no losses.py; pass the root of a "
                         f"score_sde_pytorch checkout.")
    if not torch_ready:
        print("[bench/twin] PyTorch side skipped: pass --official <score_sde_pytorch checkout> "
              "and --torch_python <python with torch> to compare with the official code.")
    for name in names:
        _compare(name, args, torch_ready)


if __name__ == "__main__":
    main()
