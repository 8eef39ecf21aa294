"""Test session setup: 4 fake CPU devices so sharding tests can build a (data=2, fsdp=2) mesh.

The flag must be set before JAX initialises its backend, hence at conftest import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.skip(f"reference fixtures not found at {FIXTURES}")
  return FIXTURES
