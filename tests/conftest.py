"""Shared pytest fixtures.

`../shared/fixtures` holds reference files written by the real t5x code. A test that needs them skips only
when `../shared` itself is absent (a user's checkout); in CI it is always present.
"""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before any test imports tensorflow.

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  if not SHARED.exists():
    pytest.skip(f"{SHARED} is absent (reference fixtures ship beside the repo, not inside it)")
  assert FIXTURES.exists(), f"{FIXTURES} missing although {SHARED} exists"
  return FIXTURES
