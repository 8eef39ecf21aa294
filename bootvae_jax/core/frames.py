"""The shape rules of a causal video autoencoder, written once.

Time: a clip has `1 + r·k` frames for a model that compresses time r-fold (frame 0 is encoded
like an image). Space: frame sides are multiples of the spatial factor. The model
(`models/autoencoder.py`), the data config and the command lines all ask here.
"""

from __future__ import annotations

# The causal frame rule.


def valid_frame_counts(temporal_factor: int, near: int, count: int = 2) -> list[int]:
  """The `count` valid clip lengths `1 + r·k` (k ≥ 0) closest to `near`."""
  candidates = [1 + temporal_factor * k for k in range(max(near // temporal_factor + 3, 3))]
  return sorted(sorted(candidates, key=lambda n: (abs(n - near), n))[:count])


def frame_rule(num_frames: int, temporal_factor: int) -> str:
  """The rule, with the valid lengths nearest `num_frames`: "a 4x causal model needs 1+4k
  frames (e.g. 13 or 17)"."""
  examples = " or ".join(str(n) for n in valid_frame_counts(temporal_factor, num_frames))
  return f"a {temporal_factor}x causal model needs 1+{temporal_factor}k frames (e.g. {examples})"


def frame_rule_error(num_frames: int, temporal_factor: int, what: str = "clip") -> str | None:
  """An actionable message if `num_frames` breaks the causal rule `1 + r·k`, else None."""
  if num_frames >= 1 and (num_frames - 1) % temporal_factor == 0:
    return None
  return f"{what} has {num_frames} frames; {frame_rule(num_frames, temporal_factor)}"


def check_frames(num_frames: int, temporal_factor: int, what: str = "clip") -> None:
  if (message := frame_rule_error(num_frames, temporal_factor, what)) is not None:
    raise ValueError(message)


# The spatial rule (written once): frame sides are multiples of the spatial factor.


def frame_size_error(
    height: int, width: int, spatial_factor: int, *, what: str = "frame size ", size: str = "{}x{}"
) -> str | None:
  """An actionable message if a `height`x`width` frame does not fit the spatial factor, else None.

  `what` names the offending value and `size` formats it and its nearest fits the way the
  caller's user wrote them: e.g. what="", size="--size={},{}" gives "--size=270,480 is not
  divisible by the spatial factor 8; sides must be divisible by 8 (e.g. --size=264,480 or
  --size=272,480)".
  """
  s = spatial_factor
  if height >= s and width >= s and not height % s and not width % s:
    return None
  below = size.format(max(s, height // s * s), max(s, width // s * s))
  above = size.format(-(-height // s) * s, -(-width // s) * s)
  examples = below if below == above else f"{below} or {above}"
  return (
      f"{what}{size.format(height, width)} is not divisible by the spatial factor {s}; sides"
      f" must be divisible by {s} (e.g. {examples})"
  )
