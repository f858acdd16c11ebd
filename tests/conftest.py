"""Test-wide JAX settings: catch silent broadcasting slips, keep float32 unless a test asks."""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "score_sde_reference"
FIXTURES = pathlib.Path(os.environ.get("SCORE_JAX_FIXTURES", FIXTURES))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    """The official score_sde parity fixtures (shared/fixtures/score_sde_reference)."""
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures not found at {FIXTURES}; set SCORE_JAX_FIXTURES")
    return FIXTURES
