"""Test-wide JAX settings: score_jax's XLA:CPU flags, catch silent broadcasting slips, float32."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import pytest

from score_jax import xla_cpu

# The suite runs with the kernels main.py uses (XLA_FLAGS is read when the backend starts).
xla_cpu.configure()
jax.config.update("jax_numpy_rank_promotion", "raise")

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
    env.pop("XLA_FLAGS", None)
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
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
