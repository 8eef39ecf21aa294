"""Which kernel an op traces: by the platform it compiles for, unless forced.

Every op in this package has a `Choice`: its implementations, the one CPU runs and the one
GPU / TPU run. The platform is `jax.default_backend()` unless `target_platform` names another:
the deviceless TPU compile (`bootvae_jax.aot`) traces on a CPU-only process for a TPU, and must
get the TPU's kernels, not the CPU formulations. Both act at trace time: a function jitted
before keeps what it was traced with. Nothing here is stored in a config or checkpoint.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

PLATFORMS = ("cpu", "gpu", "tpu")

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ops_target_platform", default=None
)


@contextlib.contextmanager
def target_platform(name: str) -> Iterator[None]:
  """Ops traced inside pick their kernels for platform `name` (one of `PLATFORMS`)."""
  if name not in PLATFORMS:
    raise ValueError(f"unknown platform {name!r}; use one of {PLATFORMS}")
  token = _TARGET.set(name)
  try:
    yield
  finally:
    _TARGET.reset(token)


def platform() -> str:
  """The platform ops trace for now: `target_platform`'s, else JAX's default backend."""
  return _TARGET.get() or jax.default_backend()


class Choice:
  """One op's implementations, the CPU's and the accelerators' default, and an override."""

  def __init__(self, op: str, implementations: tuple[str, ...], *, cpu: str, accelerator: str):
    assert cpu in implementations and accelerator in implementations
    self.op, self.implementations = op, implementations
    self._cpu, self._accelerator = cpu, accelerator
    self._forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
        f"{op}_impl", default=None
    )

  @contextlib.contextmanager
  def forced(self, name: str) -> Iterator[None]:
    """The op traced inside runs implementation `name` whatever the platform."""
    if name not in self.implementations:
      raise ValueError(
          f"unknown {self.op} implementation {name!r}; use one of {self.implementations}"
      )
    token = self._forced.set(name)
    try:
      yield
    finally:
      self._forced.reset(token)

  def current(self) -> str:
    """The implementation the op traces now: the forced one, else the platform's."""
    forced = self._forced.get()
    if forced is not None:
      return forced
    return self._cpu if platform() == "cpu" else self._accelerator
