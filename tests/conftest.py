"""Test-wide JAX settings: catch silent broadcasting slips, keep float32 unless a test asks."""

import os
import pathlib

import jax
import pytest

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
