"""XLA:CPU option sets for one config's train step, compiled side by side in one process.

  python bench/xla_flags.py [--config configs.vp.cifar10_ddpmpp_continuous] [--batch 8]
      [--rounds 3] [--steps 2] [--sets "name:opt=value,opt=value;name2:..."]

The train step (bench/train_step.py's `config_train_step`: loss, gradient, clipping, Adam, EMA) is
traced once and compiled once per option set, each option passed to XLA for that executable alone
(`jax.jit(...).lower(...).compile(compiler_options=...)`, which overrides XLA_FLAGS), so every set
runs on the same process, memory and machine load. After one warm-up call each, the sets alternate
for `--rounds` rounds of `--steps` steps; the table gives each set's median seconds per step, its
ratio to the first set (< 1: faster) and its compile time. The first set is score_jax's default
(score_jax/xla_cpu.py, no overrides). Options that XLA does not know fail at compilation and are
reported as such.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import config_train_step  # noqa: E402  (applies score_jax's XLA:CPU defaults)

SETS = ("default:;"
        "onednn:xla_cpu_use_onednn=true,xla_cpu_experimental_onednn_custom_call=true;"
        "ynn_reduce:xla_cpu_experimental_ynn_fusion_type=reduce;"
        "no_fusion_emitters:xla_cpu_use_fusion_emitters=false;"
        "concurrency_scheduler:xla_cpu_enable_concurrency_optimized_scheduler=true")


def parse_sets(text: str) -> dict[str, dict[str, object]]:
    """'name:opt=v,opt=v;name2:...' -> {name: {opt: value}} with true/false/ints converted."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, opts = part.partition(":")
        parsed = {}
        for item in filter(None, opts.split(",")):
            key, _, value = item.partition("=")
            low = value.lower()
            parsed[key.strip()] = (low == "true" if low in ("true", "false")
                                   else int(value) if value.lstrip("-").isdigit() else value)
        out[name.strip()] = parsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs.vp.cifar10_ddpmpp_continuous")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sets", default=SETS)
    args = parser.parse_args()
    sets = parse_sets(args.sets)

    step, state, x = config_train_step(args.config, args.batch)
    lowered = jax.jit(step).lower(state, x)  # not donated: every set steps from the same state
    compiled, compile_s = {}, {}
    for name, options in sets.items():
        start = time.perf_counter()
        try:
            compiled[name] = lowered.compile(compiler_options=options or None)
        except Exception as e:  # noqa: BLE001 - an unknown or unsupported option: report, go on
            print(f"[bench/xla_flags] {name}: does not compile ({type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200]})", flush=True)
            continue
        compile_s[name] = time.perf_counter() - start
        jax.block_until_ready(compiled[name](state, x))  # warm-up
        print(f"[bench/xla_flags] {name}: compiled in {compile_s[name]:.1f} s", flush=True)

    times: dict[str, list[float]] = {name: [] for name in compiled}
    for r in range(args.rounds):
        order = list(compiled) if r % 2 == 0 else list(compiled)[::-1]
        for name in order:
            for _ in range(args.steps):
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](state, x))
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[next(iter(times))])
    print(f"\n{args.config}, batch {args.batch}: {args.rounds} rounds x {args.steps} steps, "
          f"{jax.devices()[0].device_kind}")
    print("| options | s/step (median) | vs first | compile s |\n|---|---|---|---|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} {sets[name] or ''} | {med:.4f} | {med / base:.3f} | "
              f"{compile_s[name]:.1f} |")


if __name__ == "__main__":
    main()
