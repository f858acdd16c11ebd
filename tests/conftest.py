"""Test-wide JAX settings: score_jax's XLA:CPU flags, catch silent broadcasting slips, float32
products at full precision."""

import fcntl
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import jax
import pytest

from score_jax import xla_cpu

# The suite's time is mostly XLA compiling small networks that then run a few steps, and most of
# a compilation is LLVM's optimisation passes: without them the data-parallel test's script takes
# 110 s instead of 215 s. The kernels stay those main.py uses (the convolutions, dots and fusions
# are chosen before LLVM). SCORE_JAX_TEST_XLA_OPT=1 compiles as main.py does.
COMPILE_FAST = (() if os.environ.get("SCORE_JAX_TEST_XLA_OPT") == "1"
                else (("xla_backend_optimization_level", "0"),))


# compiler_options of a jitted function that runs long enough for LLVM's optimisations to pay for
# themselves (hundreds of steps): XLA's default level, which COMPILE_FAST lowers for the rest.
# test_classifier's 600 training steps, the test alone: 37.3 s at level 0, 22.3 s with these
# options on its train step (27.2 s with the whole test at the default level).
RUN_OPTIMISED = {"xla_backend_optimization_level": 3}


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
# A tiny DDPM++ on the embedded digits: seconds per run once compiled. One resolution (no down- or
# up-sampling blocks): half the layers of the default's two, which halves what every main.py
# process of the suite traces and compiles (a tiny 8-step training run: 25.5 s cold and 15.7 s
# with its programs cached, against 15.0 s and 10.3 s). The behaviour these runs test
# (checkpoints, resumption, processes, files) does not depend on the network's depth;
# test_ncsnpp.py and test_architecture.py test the network itself.
TINY_MODEL = ["--config.model.nf=8", "--config.model.ch_mult=(1,)", "--config.model.attn_resolutions=()",
              "--config.training.batch_size=16", "--config.training.n_jitted_steps=1"]


# One directory per test run, shared by both xdist workers: the controller makes it before the
# workers start (they inherit the variable) and removes it at the end. It holds
#  - the persistent compilation cache of every main.py subprocess: most of a tiny run is compiling
#    (its train step, sampler, bits/dim solver), and the test files run the same programs
#    (TINY_MODEL) from different workdirs. Measured on 2 busy cores: a tiny train run 267 s with a
#    cold cache, 67 s with a warm one; its evaluation 355 s and 119 s;
#  - the workdirs that `shared_build` trains once per run for tests that only start from them.
SUITE_DIR_VAR = "SCORE_JAX_TEST_SUITE_DIR"
_OWNED_DIR = pytest.StashKey[str]()


def pytest_configure(config):
    if not os.environ.get(SUITE_DIR_VAR):
        os.environ[SUITE_DIR_VAR] = tempfile.mkdtemp(prefix="score_jax_tests_")
        config.stash[_OWNED_DIR] = os.environ[SUITE_DIR_VAR]


def pytest_unconfigure(config):
    owned = config.stash.get(_OWNED_DIR, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


def suite_dir() -> pathlib.Path:
    """The test run's directory shared by every worker (see SUITE_DIR_VAR)."""
    return pathlib.Path(os.environ[SUITE_DIR_VAR])


def shared_build(name: str, build) -> pathlib.Path:
    """suite_dir()/name, made by `build(directory)` once per test run, whichever worker asks first.

    The others wait for it (a file lock). A build that failed is not retried: every caller fails
    with its message. Tests copy what they change, since another worker may read it meanwhile.
    """
    directory = suite_dir() / name
    with open(suite_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            failed = suite_dir() / f"{name}.failed"
            if failed.exists():
                pytest.fail(f"shared build {name} failed earlier: {failed.read_text()}")
            if not (directory / ".done").exists():
                try:
                    build(directory)
                except BaseException as e:
                    failed.write_text(f"{type(e).__name__}: {e}"[-4000:])
                    raise
                (directory / ".done").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return directory


def main_env(root: pathlib.Path) -> dict:
    """Environment of a main.py subprocess: CPU, its own tfds dir, the suite's compilation cache.

    The cache is shared by every subprocess of the test run, so each program compiles once.
    """
    env = dict(os.environ)
    env.update(XLA_FLAGS=subprocess_xla_flags(), JAX_COMPILATION_CACHE_DIR=str(suite_dir() / "jax_cache"),
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


# ------------------------------------------------------------------ scheduling on xdist workers

# `bash run.sh tests` runs pytest-xdist with --dist loadgroup: a work unit is a test module, so that
# a module's fixtures are made on one worker only, or a group of tests marked
# `xdist_group(name)` (tests that start from the same shared_build, which one worker then runs in
# order instead of the other waiting for it). pytest 9.2 broke this grouping of xdist 3.8, which
# sets the legacy `_nodeid` that pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386):
# requirements.txt pins pytest 9.1.1.
# Units start slowest first, so that the suite does not end on one worker running a minutes-long
# unit while the other is idle.
# Seconds of the slowest units (--durations, setup included) on a quiet 2-core machine; the order
# only needs to be roughly right. A unit not listed here counts as fast and keeps its collection
# order.
SLOWEST = {
    "checkpoints_reference": 140,
    "multihost_two_process": 135,
    "test_runner.py": 120,
    "multihost_trained": 95,
    "test_tutorial.py": 85,
    "test_parallel.py": 50,
    "test_ncsnpp.py": 40,
    "test_edm.py": 36,
    "test_sampling.py": 35,
    "test_likelihood.py": 32,
    "test_classifier.py": 30,
}


def _unit(item) -> str:
    """The xdist work unit of a test, as a key of SLOWEST: its xdist_group, else 'file.py'."""
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark else pathlib.Path(item.nodeid.partition("::")[0]).name


def pytest_itemcollected(item):
    # During collection, so that the mark is there when xdist's pytest_collection_modifyitems
    # turns xdist_group marks into work units. xdist workers see --dist as "no" and keep
    # "loadgroup" apart.
    config = item.config
    if ((config.getoption("loadgroup", False) or config.getoption("dist", "no") == "loadgroup")
            and not item.get_closest_marker("xdist_group")):
        item.add_marker(pytest.mark.xdist_group(_unit(item)))


def pytest_collection_modifyitems(config, items):
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        first_index.setdefault(_unit(item), i)
    items.sort(key=lambda item: (-SLOWEST.get(_unit(item), 0), first_index[_unit(item)]))
