"""Streaming: a model run chunk by chunk equals the model on the whole clip.

Inside `with streaming(states, last=...)` every op that looks at other frames than its own
keeps what the next chunk needs of this one (a causal conv: its last `kt - st` padded input
frames), so a causal model run chunk by chunk equals the model on the whole clip.
`inference/streaming.py` drives it; convs, resamplers and ProMAG's cross-level mixing read the
`active_stream()`.

Modules say how they stream by two attributes that the functions here read from any module
tree: `time_lookahead` (later input frames an output frame sees, `looks_ahead`) and
`stream_refusal` (what makes every frame depend on the whole clip, `stream_blocker`).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class Stream:
  """What one chunk of a video leaves for the next while a model runs chunk by chunk.

  Ops that see other frames than their own `previous()` / `keep()` a small state: what they
  need of the previous chunk. States are matched between chunks by call order, which is the
  same in every chunk, so a module that runs twice per step (ProMAG's lower levels, on branch
  A and on branch B) keeps one state per call.

  Chunks after the first must continue the first one in steps of the frame rule: a later chunk
  of a model (or level) with temporal factor r has a multiple of r frames and starts at a frame
  index ≡ 1 (mod r) (`inference/streaming.py` cuts them so).

  Attributes:
    first: this chunk starts the video (causal front padding; upsamplers drop their leading
      frames).
    last: this chunk ends the video (ops that look ahead pad the end and flush what they held).
    states: the states left for the next chunk, in call order (a pytree of arrays).
  """

  def __init__(self, states: Sequence[Any] | None = None, *, last: bool = False):
    self.first = states is None
    self.last = last
    self._previous = list(states or ())
    self.states: list[Any] = []
    self._waiting = False

  def previous(self) -> Any:
    """The state this op left in the previous chunk (None in the first); `keep` comes next."""
    if self._waiting:
      raise RuntimeError("Stream.previous() called twice without keep() in between")
    self._waiting = True
    if self.first:
      return None
    if len(self.states) >= len(self._previous):
      raise ValueError(
          "this chunk runs more stateful ops than the previous one; stream"
          " states must come from the same model"
      )
    return self._previous[len(self.states)]

  def keep(self, state: Any) -> None:
    """Leaves `state` for this op's call in the next chunk."""
    if not self._waiting:
      raise RuntimeError("Stream.keep() without Stream.previous()")
    self._waiting = False
    self.states.append(state)


_STREAM: contextvars.ContextVar[Stream | None] = contextvars.ContextVar("stream", default=None)


@contextlib.contextmanager
def streaming(states: Sequence[Any] | None = None, *, last: bool = False) -> Iterator[Stream]:
  """Runs the model calls inside on one chunk of a stream (see `Stream`).

  with streaming(states, last=False) as stream:   # states=None: the first chunk
    posterior = model.encode(chunk)
  states = stream.states                                 # for the next chunk
  """
  stream = Stream(states, last=last)
  token = _STREAM.set(stream)
  try:
    yield stream
  finally:
    _STREAM.reset(token)


def active_stream() -> Stream | None:
  """The stream of the chunk being traced, or None for whole-clip calls."""
  return _STREAM.get()


STREAM_REFUSAL = (
    "{what} makes every frame depend on the whole clip, so it cannot run"
    " chunk by chunk exactly; use the official temporal tiling"
    " (bootvae_jax.inference.chunked.tiled_encode / tiled_decode, or"
    " reconstruct --mode=tiled) or cross-faded chunks (--mode=crossfade)"
)


def stream_blocker(model: nnx.Module) -> str | None:
  """Why `model` cannot stream exactly (naming the first offending layer), or None: the first
  module whose `stream_refusal` is set (a clip-wide norm, attention over all frames)."""
  for path, node in nnx.iter_graph(model):
    what = getattr(node, "stream_refusal", None) if isinstance(node, nnx.Module) else None
    if what:
      where = "/".join(str(p) for p in path)
      return STREAM_REFUSAL.format(what=f"{what} ({where})")
  return None


def looks_ahead(module: nnx.Module) -> bool:
  """Whether some output frame of `module` depends on later input frames (a centred conv, a
  trilinear time upsampler). Streaming such a model holds those frames back until the next
  chunk, and the last chunk must be flagged `last` (it cannot be padded and trimmed)."""
  return any(
      isinstance(node, nnx.Module) and getattr(node, "time_lookahead", 0) > 0
      for _, node in nnx.iter_graph(module)
  )


def align_held(x: jax.Array, like: jax.Array) -> jax.Array:
  """x's frames, delayed to line up with `like`, a same-rate output that holds frames back
  (a residual branch through convs that look ahead). The identity outside a stream."""
  stream = active_stream()
  if stream is None:
    return x
  held = stream.previous()
  x = x if held is None else jnp.concatenate([held, x], axis=1)
  stream.keep(x[:, like.shape[1] :])
  return x[:, : like.shape[1]]


def time_window(
    stream: Stream,
    x: jax.Array,
    *,
    kt: int,
    st: int,
    front: int,
    back: int,
    pad: Callable[[jax.Array, int, int], jax.Array],
) -> jax.Array:
  """The frames a valid-in-time conv (kernel kt, stride st) runs on in this chunk, where the
  whole clip is padded by `pad(x, front, back)` (frames in front, at the back).

  The first frames to arrive are padded in front as the whole clip is; later ones are
  prefixed with the padded input frames the previous chunk's windows had not finished with.
  Only the last chunk is padded at the back, so a conv that looks ahead holds its last
  outputs until the next chunk brings the frames they need.
  """
  if kt < st:
    raise ValueError(f"streaming needs temporal kernel >= stride, got kt={kt}, st={st}")
  held = stream.previous()
  if held is None:  # no frame has reached this conv yet
    if x.shape[1] == 0:  # (all held back upstream): still none
      stream.keep(None)
      return x
    x = pad(x, front, 0)
  else:
    x = jnp.concatenate([held, x], axis=1)
  if stream.last:
    x = pad(x, 0, back)
  num_out = max((x.shape[1] - kt) // st + 1, 0)  # 0: all held until the next chunk
  stream.keep(x[:, st * num_out :])
  return x
