"""NCSN++ / DDPM++ cost: parameters, forward+backward step time and peak memory, remat and bf16 on/off.

For the CIFAR-10 architectures of configs/vp/cifar10_ddpmpp_continuous (DDPM++) and
configs/ve/cifar10_ncsnpp_continuous (NCSN++) — read from configs/ when present, otherwise built
from the official values below — one process compiles value_and_grad of a squared-output loss for
each variant (remat off/on x float32/bfloat16 compute) and measures, side by side:
  - peak memory: compiled.memory_analysis(), temp + argument bytes (XLA's buffer assignment; it
    works on CPU, GPU and TPU without running the program);
  - step time: median wall time of `repeats` calls of the compiled executable, after `warmup`
    untimed calls, the variants of one architecture alternated call by call (steady state).
The last line is the memory ratio remat / no remat (float32), per architecture.

Usage: python bench/models.py [--batch 8] [--repeats 8] [--warmup 3] [--archs ddpmpp,ncsnpp]
       [--variants fp32,remat,bf16]   (also: remat+bf16)
       [--nf 128] [--num_res_blocks 4]   (smaller nf / blocks for a quick run; defaults are the official ones)
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from score_jax.models.ncsnpp import NCSNpp  # noqa: E402
from score_jax.models.registry import model_kwargs  # noqa: E402
from score_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them

# Official CIFAR-10 values (score_sde configs/default_cifar10_configs.py and the two leaf configs).
_COMMON = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1,
               resamp_with_conv=True, conditional=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
               resblock_type="biggan", progressive="none", progressive_combine="sum", init_scale=0.0,
               fourier_scale=16.0, nonlinearity="swish", image_size=32, num_channels=3, sigma_min=0.01,
               sigma_max=50.0, num_scales=1000)
OFFICIAL = {
    "ddpmpp": dict(_COMMON, fir=False, progressive_input="none", embedding_type="positional",
                   scale_by_sigma=False, centered=True),
    "ncsnpp": dict(_COMMON, fir=True, progressive_input="residual", embedding_type="fourier",
                   scale_by_sigma=True, centered=False),
}
CONFIG_MODULES = {"ddpmpp": "configs.vp.cifar10_ddpmpp_continuous", "ncsnpp": "configs.ve.cifar10_ncsnpp_continuous"}
VARIANTS = {"fp32": dict(remat=False, dtype=None), "remat": dict(remat=True, dtype=None),
            "bf16": dict(remat=False, dtype=jnp.bfloat16), "remat+bf16": dict(remat=True, dtype=jnp.bfloat16)}


def architecture(arch: str) -> tuple[dict[str, Any], str]:
    """NCSNpp keyword arguments for `arch` and where they came from (configs/ or the built-in table)."""
    try:
        config = importlib.import_module(CONFIG_MODULES[arch]).get_config()
        return model_kwargs(NCSNpp, config), CONFIG_MODULES[arch]
    except ImportError:
        return dict(OFFICIAL[arch]), "built-in official values"


def random_params(model: NCSNpp, key: jax.Array, image_size: int, channels: int) -> Any:
    """Parameters with the model's tree and small random values, without compiling `init`."""
    shapes = jax.eval_shape(model.init, {"params": key, "dropout": key},
                            jnp.zeros((1, image_size, image_size, channels)),
                            jnp.zeros((1,), jnp.int32))["params"]
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    rng = np.random.RandomState(0)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(0.02 * rng.randn(*s.shape), s.dtype) for s in leaves])


def compile_step(model: NCSNpp, params: Any, x: jax.Array, labels: jax.Array, key: jax.Array):
    """value_and_grad of mean(output^2) w.r.t. params, compiled for these arguments."""
    def loss(p, x, labels, key):
        out = model.apply({"params": p}, x, labels, train=True, rngs={"dropout": key})
        return jnp.mean(out.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss)).lower(params, x, labels, key).compile()


def prepare(arch_kwargs: dict[str, Any], variant: dict[str, Any], batch: int) -> dict[str, Any]:
    """Compile one model variant: its executable, arguments, parameter count, compile time, memory."""
    model = NCSNpp(**{**arch_kwargs, **variant})
    size, channels = arch_kwargs["image_size"], arch_kwargs["num_channels"]
    key = jax.random.PRNGKey(0)
    params = random_params(model, key, size, channels)
    x = jax.random.uniform(jax.random.PRNGKey(1), (batch, size, size, channels))
    fourier = arch_kwargs["embedding_type"] == "fourier"
    labels = jnp.linspace(0.02, 40.0, batch) if fourier else jnp.linspace(1.0, 990.0, batch)
    start = time.perf_counter()
    compiled = compile_step(model, params, x, labels, key)
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    return dict(run=lambda: jax.block_until_ready(compiled(params, x, labels, key)),
                params=sum(p.size for p in jax.tree_util.tree_leaves(params)), compile_s=compile_s,
                peak_mb=(mem.temp_size_in_bytes + mem.argument_size_in_bytes) / 2 ** 20,
                temp_mb=mem.temp_size_in_bytes / 2 ** 20, times=[])


def time_variants(variants: dict[str, dict[str, Any]], repeats: int, warmup: int) -> None:
    """Steady-state step times: `warmup` untimed calls each, then `repeats` rounds alternating order."""
    for v in variants.values():
        for _ in range(warmup):
            v["run"]()
    names = list(variants)
    for r in range(repeats):
        # Alternate the order of the variants so drifting machine load hits all of them alike.
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            variants[name]["run"]()
            variants[name]["times"].append(time.perf_counter() - start)
    for v in variants.values():
        v["step_s"] = statistics.median(v["times"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls first (the executable is already compiled)")
    parser.add_argument("--archs", default="ddpmpp,ncsnpp")
    parser.add_argument("--variants", default="fp32,remat,bf16")
    parser.add_argument("--nf", type=int, default=None)
    parser.add_argument("--num_res_blocks", type=int, default=None)
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, device {jax.devices()[0].device_kind}, batch {args.batch}")
    ratios = []
    for arch in args.archs.split(","):
        kwargs, source = architecture(arch)
        kwargs.update({k: v for k, v in (("nf", args.nf), ("num_res_blocks", args.num_res_blocks)) if v is not None})
        print(f"{arch} ({source}; nf={kwargs['nf']}, num_res_blocks={kwargs['num_res_blocks']})")
        results = {name: prepare(kwargs, VARIANTS[name], args.batch)
                   for name in args.variants.split(",")}
        time_variants(results, args.repeats, args.warmup)
        for name, r in results.items():
            print(f"  {name:11s} params {r['params']:>11,d}  peak {r['peak_mb']:8.1f} MB (temp {r['temp_mb']:8.1f})"
                  f"  step {r['step_s']:7.3f} s  compile {r['compile_s']:6.1f} s", flush=True)
        if "fp32" in results and "remat" in results:
            ratios.append(f"{arch} {results['remat']['peak_mb'] / results['fp32']['peak_mb']:.3f}")
        if "bf16" in results and "remat+bf16" in results:
            ratios.append(f"{arch}/bf16 {results['remat+bf16']['peak_mb'] / results['bf16']['peak_mb']:.3f}")
    print("peak memory ratio remat / no remat: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
