"""Test-wide JAX settings: score_jax's XLA:CPU flags, catch silent broadcasting slips, float32
products at full precision."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import pytest

from score_jax import xla_cpu

# The suite's time is mostly XLA compiling small networks that then run a few steps, and most of
# a compilation is LLVM's optimisation passes: without them the data-parallel test's script takes
# 110 s instead of 215 s. The kernels stay those main.py uses (the convolutions, dots and fusions
# are chosen before LLVM). SCORE_JAX_TEST_XLA_OPT=1 compiles as main.py does.
COMPILE_FAST = (() if os.environ.get("SCORE_JAX_TEST_XLA_OPT") == "1"
                else (("xla_backend_optimization_level", "0"),))


def subprocess_xla_flags(extra: str = "") -> str:
    """XLA_FLAGS of a test subprocess: `extra` plus the suite's compile-time flag."""
    return xla_cpu.with_defaults(extra, COMPILE_FAST)


os.environ["XLA_FLAGS"] = subprocess_xla_flags(os.environ.get("XLA_FLAGS", ""))
xla_cpu.configure()  # then the kernels main.py uses (XLA_FLAGS is read when the backend starts)
jax.config.update("jax_numpy_rank_promotion", "raise")
# The references are float32 (or float64) results; on GPUs XLA's default float32 convolutions and
# dots run in TF32 (10-bit mantissa), which is a speed choice of the user, not of the maths tested.
# The CPU computes float32 products in full either way.
jax.config.update("jax_default_matmul_precision", "highest")

# The official parity data ships with the tests; SCORE_JAX_FIXTURES may point at another copy.
FIXTURES = pathlib.Path(os.environ.get(
    "SCORE_JAX_FIXTURES", pathlib.Path(__file__).resolve().parent / "fixtures" / "score_sde_reference"))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """The official score_sde parity fixtures (tests/fixtures/score_sde_reference)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; set SCORE_JAX_FIXTURES")
    return FIXTURES


# ------------------------------------------------------------------ running the real main.py

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A tiny DDPM++ on the embedded digits: seconds per run once compiled.
TINY_MODEL = ["--config.model.nf=8", "--config.model.attn_resolutions=()",
              "--config.training.batch_size=16", "--config.training.n_jitted_steps=1"]


def main_env(root: pathlib.Path) -> dict:
    """Environment of a main.py subprocess: CPU, its own tfds dir, a compilation cache under root.

    The cache is shared by the subprocesses of a test, so only the first one compiles.
    """
    env = dict(os.environ)
    env.update(XLA_FLAGS=subprocess_xla_flags(), JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               TFDS_DATA_DIR=str(root / "tfds"), JAX_PLATFORMS="cpu")
    return env


def main_cmd(*args: str) -> list[str]:
    """The command line of `python main.py ARGS`."""
    return [sys.executable, str(ROOT / "main.py"), *args]


def run_main(args, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run main.py with `args` to completion; stdout and stderr captured as text."""
    return subprocess.run(main_cmd(*args), env=env, capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
