"""What is at this path: the one place that opens a model from disk.

    loaded = loading.load("workdirs/promag_8x")                     # kind found from the files
    loaded = loading.load("vae/weights.safetensors", config_path="vae/config.json", kind="odvae")
    loaded.model, loaded.model_config, loaded.source                 # source: JSON-able provenance

The kinds (`KINDS`; `kind_of(path)` tells them apart, `kind=` names one):
  * `workdir`: a training run, `<workdir>/checkpoints/<step>/` (orbax; `training/checkpoints.py`
    writes them). The model is built abstractly from the config stored in the checkpoint and
    every parameter is filled from it (`load_model`, also `bootvae_jax.load_model`).
  * `cvvae` / `odvae`: released weights, a `.safetensors` (or OD-VAE `.ckpt`) file or a folder
    holding one, with the official `config.json` (`config_path`, default: beside the weights);
    `interop/official.py`.
  * `diffusers`: a diffusers `AutoencoderKL` folder (`config.json` +
    `diffusion_pytorch_model.safetensors`): an `ImageVAE` (`interop/diffusers_vae.py`).
  * `exported`: a folder `bootvae_jax.export` wrote (`config.json` + `model.safetensors`), in
    either format (`interop/exported.py`).

Command lines name a model with the same flags everywhere (`define_model_flags`,
`load_from_flags`): `--workdir` [`--step`, `--ema`], or `--official` with `--weights` and
`--model_config`.

The read side of the workdir layout lives here (`checkpoint_steps`, `resolve_step`,
`read_config`, `load_params`, `transfer_params`, `quiet_checkpoint_reading`,
`quiet_libraries`);
`training/checkpoints.py` writes and resumes with it. Workdirs may be local paths or URLs such
as gs:// (etils.epath, as orbax uses). JAX, flax and orbax are imported inside the functions,
so that a command line defining these flags still answers --help at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as py_logging
import os
import re
import sys
import threading
import time
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np
from absl import flags
from absl import logging
from etils import epath

from bootvae_jax.cli import UserError

OFFICIAL_KINDS = ("cvvae", "odvae")
KINDS = ("workdir",) + OFFICIAL_KINDS + ("diffusers", "exported")
# The weights file names a diffusers folder holds (`AutoencoderKL.save_pretrained`).
DIFFUSERS_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)
WHAT_LOADS = (
    "a training workdir (checkpoints/), released CV-VAE / OD-VAE weights (a .safetensors or"
    " .ckpt file with the official config.json), a diffusers VAE folder (config.json +"
    " diffusion_pytorch_model.safetensors) or a folder bootvae_jax.export wrote (config.json +"
    " model.safetensors)"
)


# ----------------------------------------------------------------------------------------------
# Parameter paths.


def path_string(path: tuple) -> str:
  """'/'-joined parameter path, the form `config.freeze` regexes are matched against."""
  return "/".join(str(p) for p in path)


def path_matches(patterns, path: str) -> bool:
  """Whether a regex of `patterns` matches the whole '/'-joined `path` (re.fullmatch).

  The one matching rule of `config.freeze`, `config.init_checkpoint.mapping` and
  `config.init_checkpoint.exclude`: "encoder/down/0/.*" selects everything under
  encoder/down/0; "encoder/down/0" alone selects nothing (no parameter has that path).
  """
  return any(re.fullmatch(p, path) for p in patterns)


# ----------------------------------------------------------------------------------------------
# The workdir layout: <workdir>/checkpoints/<step>/{state,data,meta}.


def absolute(path: str | os.PathLike) -> str:
  """Local paths made absolute (orbax needs that); URLs (gs://...) as they are."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def checkpoint_dir(workdir: str | os.PathLike) -> str:
  return str(epath.Path(absolute(workdir)) / "checkpoints")


def step_dir(workdir: str | os.PathLike, step: int) -> str:
  return str(epath.Path(checkpoint_dir(workdir)) / str(step))


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The complete checkpoint steps of a training workdir, ascending ([] if none).

  Orbax's own rule decides what is complete (an interrupted save is not listed).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = checkpoint_dir(workdir)
  if not epath.Path(directory).is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def resolve_step(workdir: str | os.PathLike, step: int | None = None) -> int:
  """`step` if the workdir has it; None (or a negative step) means the latest one."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(
        f"no checkpoint under {checkpoint_dir(workdir)}; is {workdir} a"
        " training workdir that reached its first checkpoint_every?"
    )
  if step is None or step < 0:
    return steps[-1]
  if step not in steps:
    raise FileNotFoundError(
        f"no checkpoint of step {step} under {checkpoint_dir(workdir)};" f" available: {steps}"
    )
  return step


# Files every complete step directory has (orbax writes the commit marker last).
_REQUIRED_FILES = (
    ("commit_success.txt", "no commit marker: the save did not finish"),
    ("state/_METADATA", "state/_METADATA is missing"),
    ("meta", "the meta item is missing"),
)


def checkpoint_problem(workdir: str | os.PathLike, step: int) -> str | None:
  """Why the checkpoint of `step` is incomplete (a file every complete one has is missing),
  or None. Damage inside a file only shows when it is read (`read_intact`)."""
  directory = epath.Path(step_dir(workdir, step))
  for name, problem in _REQUIRED_FILES:
    if not (directory / name).exists():
      return problem
  return None


class DamagedCheckpointError(UserError):
  """A checkpoint step that cannot be read (`step`, `reason`): a truncated or missing file."""

  def __init__(self, workdir: str | os.PathLike, step: int, reason: str):
    self.step, self.reason = step, reason
    super().__init__(f"checkpoint {step_dir(workdir, step)} is damaged ({reason})")


def one_line_cause(error: BaseException) -> str:
  """The innermost cause's first line (orbax wraps tensorstore's precise error, e.g.
  `OUT_OF_RANGE: Error reading "params...": Requested byte range [..) is not valid`, in a
  message that prints the whole tensorstore spec)."""
  while error.__cause__ is not None or (
      error.__context__ is not None and not error.__suppress_context__
  ):
    error = error.__cause__ or error.__context__
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 400 else text[:400] + "..."


def read_step(workdir: str | os.PathLike, step: int, read: Callable[[], Any], abandoned=None):
  """`read()` of the files of checkpoint `step`; whatever a damaged file raises there
  (tensorstore, orbax, json, a metadata that reads as None) becomes a `DamagedCheckpointError`
  naming the step and the reason. `UserError`s (a config that does not fit) pass unchanged.

  `abandoned`: the `quiet_checkpoint_reading` object to tell about a failed read (its
  leftover errors on other threads are then dropped); None opens one around this read."""
  if (problem := checkpoint_problem(workdir, step)) is not None:
    raise DamagedCheckpointError(workdir, step, problem)
  with contextlib.ExitStack() as stack:
    if abandoned is None:
      abandoned = stack.enter_context(quiet_checkpoint_reading())
    try:
      with quiet_libraries():
        return read()
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      abandoned.add(step_dir(workdir, step))
      raise DamagedCheckpointError(workdir, step, one_line_cause(error)) from error


def read_intact(
    workdir: str | os.PathLike, step: int | None, read: Callable[[int], Any]
) -> tuple[int, Any]:
  """(step, `read(step)`) of checkpoint `step`, or with `step` None (or negative) of the
  newest intact one: a damaged newer one gets the one-line warning the trainer gives
  (`checkpoint .../N is damaged (reason); trying the one before it`) and is left in place.

  Raises:
    DamagedCheckpointError: `step` names a damaged checkpoint, or no checkpoint is intact.
  """
  if step is not None and step >= 0:
    step = resolve_step(workdir, step)
    return step, read_step(workdir, step, lambda: read(step))
  damaged = []
  for candidate in reversed(checkpoint_steps(workdir)):
    try:
      return candidate, read_step(workdir, candidate, lambda: read(candidate))
    except DamagedCheckpointError as error:
      logging.warning("%s; trying the one before it", error)
      damaged.append(f"step {candidate}: {error.reason}")
  if not damaged:
    resolve_step(workdir)  # raises: no checkpoint at all
  raise UserError(f"no intact checkpoint in {checkpoint_dir(workdir)}: " + "; ".join(damaged))


def state_tree_metadata(workdir: str | os.PathLike, step: int) -> Mapping[str, Any]:
  """The stored tree of checkpoint `step`'s `state` item (shapes and dtypes, no arrays).

  Raises:
    ValueError: orbax reads no metadata (a truncated `_METADATA` or `manifest.ocdbt`); call
      it inside `read_step` to get a `DamagedCheckpointError`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  state_dir = epath.Path(step_dir(workdir, step)) / "state"
  metadata = ocp.PyTreeCheckpointer().metadata(state_dir)
  tree = None if metadata is None else getattr(metadata.item_metadata, "tree", None)
  if tree is None:
    raise ValueError("the state's metadata (_METADATA, manifest.ocdbt) does not read")
  return tree


class _AbandonedReads:
  """What an abandoned checkpoint read keeps raising after its failure was reported.

  When one array of a step fails to read, orbax gives up and closes its event loop while
  tensorstore still completes the other reads on its own threads; their callbacks then raise
  `RuntimeError: Event loop is closed` (or the read error again), printed as hundreds of
  tracebacks. Once a read failed (`add`), these are noise; any other error is not.
  """

  def __init__(self):
    self.paths: set[str] = set()
    self.last_noise = 0.0  # time.monotonic() of the last dropped error

  def add(self, path: str | os.PathLike) -> None:
    self.paths.add(str(path))
    self.last_noise = time.monotonic()

  def is_noise(self, error) -> bool:
    if not self.paths or error is None:
      return False
    text = str(error)
    noise = (isinstance(error, RuntimeError) and text == "Event loop is closed") or any(
        path in text for path in self.paths
    )
    if noise:
      self.last_noise = time.monotonic()
    return noise

  def filter(self, record: py_logging.LogRecord) -> bool:
    """A logging filter: asyncio logs an abandoned read's task ("Task exception was never
    retrieved") with that noise as its exception."""
    error = record.exc_info[1] if record.exc_info else None
    return not (self.is_noise(error) or self.paths and self.is_noise(record.getMessage()))

  def settle(self, quiet_seconds: float = 0.5, limit_seconds: float = 5.0) -> None:
    """Waits until the abandoned reads stopped raising for `quiet_seconds` (so that their
    leftovers are dropped here, not printed after the hooks are put back)."""
    import gc  # pylint: disable=g-import-not-at-top

    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
      gc.collect()  # the abandoned read's coroutines complain when collected: here, not later
      if time.monotonic() - self.last_noise >= quiet_seconds:
        return
      time.sleep(0.05)


@contextlib.contextmanager
def quiet_libraries():
  """Silences orbax / tensorstore / asyncio / jax logging while a possibly damaged checkpoint
  is read (its failure is reported in one line by the caller); the levels come back on exit."""
  loggers = [py_logging.getLogger(name) for name in ("absl", "orbax", "asyncio", "jax")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(py_logging.CRITICAL + 1)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


@contextlib.contextmanager
def quiet_checkpoint_reading():
  """Reads possibly damaged checkpoints without pages of tracebacks; restores every hook.

  Yields an object whose `add(step_dir)` marks a read that failed: from then on, what that
  abandoned read still raises on other threads (`_AbandonedReads`) is dropped by
  `sys.excepthook`, `threading.excepthook` and `sys.unraisablehook`, and only that. On exit
  the three hooks are put back as they were, also when the body raises.
  """
  hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
  previous_except, previous_thread, previous_unraisable = hooks
  abandoned = _AbandonedReads()
  sys.excepthook = lambda t, v, tb: None if abandoned.is_noise(v) else previous_except(t, v, tb)
  threading.excepthook = lambda a: None if abandoned.is_noise(a.exc_value) else previous_thread(a)
  sys.unraisablehook = lambda u: None if abandoned.is_noise(u.exc_value) else previous_unraisable(u)
  asyncio_logger = py_logging.getLogger("asyncio")
  asyncio_logger.addFilter(abandoned)
  try:
    yield abandoned
  finally:
    if abandoned.paths:
      abandoned.settle()
    asyncio_logger.removeFilter(abandoned)
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks


def _without_retired_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` less the fields older runs stored that no longer mean anything, so their
  checkpoints keep loading: `model.conv_impl` (the conv kernel is now chosen by backend in
  `bootvae_jax/ops/`, never stored)."""
  if "model" in config and "conv_impl" in config.model:
    del config.model["conv_impl"]
  return config


def read_config(workdir: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
  """The full training config the checkpoint at `step` (None: latest) was saved with.

  Checkpoints written before configs were stored in them fall back to the run's
  `config.json` (which the trainer used to write), with a warning.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  step = resolve_step(workdir, step)
  meta_dir = epath.Path(step_dir(workdir, step)) / "meta"
  meta = {}
  if meta_dir.is_dir():
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir) or {}
  if "config" in meta:
    return _without_retired_fields(ml_collections.ConfigDict(meta["config"]))
  legacy = epath.Path(absolute(workdir)) / "config.json"
  if legacy.is_file():
    logging.warning(
        "checkpoint %d of %s stores no config; using the legacy %s", step, workdir, legacy
    )
    return _without_retired_fields(ml_collections.ConfigDict(json.loads(legacy.read_text())))
  raise FileNotFoundError(
      f"the checkpoint of step {step} in {workdir} stores no config (it was"
      " saved without Checkpoints.save(config=...)) and there is no"
      " config.json beside it"
  )


def _flatten(tree: Any, prefix: tuple = ()) -> dict[str, np.ndarray]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (k,)))
  elif tree is not None:
    out[path_string(prefix)] = np.asarray(tree)
  return out


def load_params(
    path: str | os.PathLike, step: int | None = None, *, ema: bool = False
) -> dict[str, np.ndarray]:
  """All autoencoder parameters (trained and frozen) of a run, keyed by '/'-joined path.

  Args:
    path: a workdir, or one checkpoint step directory (`<workdir>/checkpoints/<step>`).
    step: which step of a workdir (None or -1: the latest).
    ema: take the EMA of the trained parameters instead of the raw ones.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = absolute(path)
  if (epath.Path(path) / "state").is_dir():
    state_dir = epath.Path(path) / "state"
  else:
    state_dir = epath.Path(step_dir(path, resolve_step(path, step))) / "state"
  # Partial restore: only the parameter subtrees, as host numpy arrays (no optimizer state,
  # and no dependence on the mesh the previous stage ran on).
  checkpointer = ocp.PyTreeCheckpointer()
  item_metadata = checkpointer.metadata(state_dir).item_metadata
  if item_metadata is None:  # a truncated _METADATA or manifest.ocdbt
    raise ValueError("the state's metadata (_METADATA, manifest.ocdbt) does not read")
  tree = item_metadata.tree
  wanted = {k: tree[k] for k in ("ema_params" if ema else "params", "frozen")}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(
      state_dir,
      args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
  )
  params = _flatten(restored["ema_params" if ema else "params"])
  params.update(_flatten(restored["frozen"]))
  # nnx Variables are saved as {'value': array} nodes in some orbax versions.
  return {re.sub(r"/value$", "", k): v for k, v in params.items()}


def mapped_source_path(target_path: str, mapping=()) -> str:
  """The source path of `target_path` under (regex, template) `mapping`: the template of the
  first regex matching the whole path (`path_matches`'s rule)."""
  for pattern, template in mapping:
    if (match := re.fullmatch(pattern, target_path)) is not None:
      return match.expand(template)
  return target_path


def transfer_params(
    target,
    source: Mapping[str, np.ndarray],
    mapping=(),
    *,
    require_all: bool = True,
    mapped_only: bool = False,
):
  """Copies `source` arrays into the matching parameters of `target`.

  Args:
    target: an nnx parameter state (e.g. `TrainState.frozen` of the grown model).
    source: '/'-joined path → array, from `load_params`.
    mapping: (regex, template) pairs rewriting a target path into its source path; the first
      matching pair is used; unmatched paths keep their own name.
    require_all: every source parameter must land somewhere.
    mapped_only: fill only target paths that a `mapping` regex matches (a stage's mapping
      lists everything it imports; the other parameters are new).

  Returns:
    (the filled `nnx.State`, the target paths that were filled). A shape mismatch raises a
    ValueError naming the first mismatched parameter.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  used, filled = set(), []

  def fill(path, variable):
    target_path = path_string(path)
    if mapped_only and not path_matches([p for p, _ in mapping], target_path):
      return variable
    source_path = mapped_source_path(target_path, mapping)
    if source_path not in source:
      return variable
    value = source[source_path]
    if value.shape != variable.shape:
      raise ValueError(
          f"checkpoint architecture does not match: parameter {target_path} (from"
          f" {source_path}) has shape {value.shape} in the checkpoint but {variable.shape} in"
          " the model"
      )
    used.add(source_path)
    filled.append(target_path)
    return variable.replace(jnp.asarray(value, variable.dtype))

  out = nnx.map_state(fill, target)
  unused = sorted(set(source) - used)
  if require_all and unused:
    raise ValueError(
        f"{len(unused)} checkpoint parameters have no place in the model, e.g."
        f" {unused[:5]}; check config.init_checkpoint.mapping"
    )
  return out, filled


def _workdir_model(
    workdir: str | os.PathLike, step: int | None, ema: bool, build: Callable[[Any], Any]
) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(`build(config.model)` filled from the checkpoint of `step`, the checkpoint's config, the
  step): `step` None is the newest intact checkpoint (`read_intact`)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  step, (config, stored) = read_intact(
      workdir, step, lambda s: (read_config(workdir, s), load_params(workdir, s, ema=ema))
  )
  model = nnx.eval_shape(lambda: build(config.model))  # no random initialisation
  params, filled = transfer_params(nnx.state(model, nnx.Param), stored)
  missing = sorted({path_string(p) for p, _ in params.flat_state()} - set(filled))
  if missing:
    raise ValueError(
        f"the checkpoint of step {step} in {workdir} lacks {len(missing)}"
        f" parameters of the model its config builds, e.g. {missing[:5]}"
    )
  nnx.update(model, params)
  return model, config, step


def load_model(
    workdir: str | os.PathLike, step: int | None = None, ema: bool = False
) -> tuple[Any, ml_collections.ConfigDict]:
  """The trained model of a training run, and the config it was trained with.

  The model is built abstractly from the checkpoint's config (`nnx.eval_shape`: no random
  initialisation) and every parameter is filled from the checkpoint, or this raises.

  Args:
    workdir: the training workdir (local path or URL).
    step: checkpoint step; None for the newest intact one (a damaged newer one is reported in
      one line and skipped, as the trainer does; a damaged `step` is an error saying why).
    ema: the EMA of the trained parameters instead of the raw ones (frozen parameters are
      the same either way).

  Returns:
    (a `VideoAutoencoder` / `GrownAutoencoder`, the full training config).
  """
  from bootvae_jax import models  # pylint: disable=g-import-not-at-top

  model, config, _ = _workdir_model(workdir, step, ema, models.build_model)
  return model, config


# ----------------------------------------------------------------------------------------------
# What is at a path.


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise UserError(f"{path}: not a readable JSON file ({error})") from error


def _official_kind(config: Any) -> str | None:
  """ "cvvae" / "odvae" when a config.json says it is released weights' (the reference
  fixtures' `model`, an official export's `_bootvae_jax.kind`, the released `_class_name`)."""
  if not isinstance(config, Mapping):
    return None
  from bootvae_jax.models import architectures  # pylint: disable=g-import-not-at-top

  classes = {name: kind for kind, name in architectures.OFFICIAL_CLASSES.items()}
  for kind in (
      (config.get("_bootvae_jax") or {}).get("kind"),
      config.get("model") if isinstance(config.get("model"), str) else None,
      classes.get(config.get("_class_name")),
  ):
    if kind in OFFICIAL_KINDS:
      return kind
  return None


def _official_weights(folder: epath.Path) -> epath.Path | None:
  """The one weights file of an official folder (a fixture's, a release's or an export's)."""
  for name in ("weights.safetensors", "model.safetensors") + DIFFUSERS_WEIGHTS[:2]:
    if (folder / name).is_file():
      return folder / name
  found = sorted(folder.glob("*.ckpt")) + sorted(folder.glob("*.safetensors"))
  return found[0] if len(found) == 1 else None


def kind_of(path: str | os.PathLike, config_path: str | os.PathLike | None = None) -> str:
  """Which of `KINDS` is at `path` (a folder, or a weights file for released weights).

  Raises:
    UserError: `path` is none of them (naming what each would need).
  """
  location = epath.Path(absolute(path))
  if location.is_dir():
    if (location / "checkpoints").is_dir():
      return "workdir"
    config_file = epath.Path(config_path) if config_path else location / "config.json"
    if config_file.is_file():
      config = _read_json(config_file)
      # "bootvae_jax" is `interop.exported.EXPORT_FORMAT` (read here without importing JAX).
      if isinstance(config, Mapping) and config.get("format") == "bootvae_jax":
        return "exported"
      if (kind := _official_kind(config)) is not None:
        return kind
      if any((location / name).is_file() for name in DIFFUSERS_WEIGHTS):
        return "diffusers"
  elif location.is_file():
    config_file = epath.Path(config_path) if config_path else location.parent / "config.json"
    if config_file.is_file() and (kind := _official_kind(_read_json(config_file))) is not None:
      return kind
    raise UserError(
        f"{path}: a weights file, but {config_file} does not say of which released model;"
        f" name the kind (--official={' or --official='.join(OFFICIAL_KINDS)})"
    )
  what = "does not exist" if not location.exists() else "is none of the model kinds"
  raise UserError(f"{path} {what}; a model path is {WHAT_LOADS}")


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model opened by `load`.

  model: a `VideoAutoencoder`, `GrownAutoencoder` or (diffusers) `ImageVAE`, float32.
  model_config: the `model` config it is built from.
  source: JSON-able provenance (the command lines print it): `workdir`, `step`, `ema`; or
    `official`, `weights`; or `diffusers` / `exported` with the folder.
  config: a workdir's whole training config; None for the other kinds.
  """

  model: Any
  model_config: ml_collections.ConfigDict
  source: dict[str, Any]
  config: ml_collections.ConfigDict | None = None


def load(
    path: str | os.PathLike,
    *,
    config_path: str | os.PathLike | None = None,
    step: int | None = None,
    ema: bool = False,
    kind: str | None = None,
) -> Loaded:
  """The model at `path`, whatever kind it is (`kind_of`, or `kind` to name it).

  Args:
    path: a training workdir, released weights (a file, or a folder holding one), a diffusers
      VAE folder or an exported folder.
    config_path: released weights' official `config.json` (default: `config.json` beside the
      weights).
    step: a workdir's checkpoint step (None: the latest).
    ema: a workdir's EMA parameters.
    kind: one of `KINDS`; None finds it from the files.

  Raises:
    UserError: an unknown kind, a path that is none of the kinds, or `step` / `ema` for a kind
      that has no checkpoints.
  """
  if kind is None:
    kind = kind_of(path, config_path)
  if kind not in KINDS:
    raise UserError(f"kind={kind!r}; use one of {KINDS}")
  if kind != "workdir" and (step is not None or ema):
    raise UserError(f"{path} holds {kind} weights: --step and --ema apply to a --workdir only")
  if kind == "workdir":
    from bootvae_jax import models  # pylint: disable=g-import-not-at-top

    model, config, step = _workdir_model(path, step, ema, models.build_model)
    return Loaded(model, config.model, dict(workdir=os.fspath(path), step=step, ema=ema), config)
  location = epath.Path(absolute(path))
  if kind in OFFICIAL_KINDS:
    from bootvae_jax.interop import official  # pylint: disable=g-import-not-at-top

    weights = _official_weights(location) if location.is_dir() else location
    if weights is None:
      raise UserError(f"{path}: no weights file (.safetensors or .ckpt) of released {kind} weights")
    if config_path is None:
      config_path = weights.parent / "config.json"
    model = official.load_official(kind, os.fspath(weights), os.fspath(config_path))
    return Loaded(model, model.config, dict(official=kind, weights=os.fspath(weights)))
  if kind == "diffusers":
    from bootvae_jax.interop import diffusers_vae  # pylint: disable=g-import-not-at-top

    model = diffusers_vae.load_diffusers_vae(os.fspath(location))
    return Loaded(model, model.config, dict(diffusers=os.fspath(location)))
  from bootvae_jax.interop import exported  # pylint: disable=g-import-not-at-top

  model = exported.read_exported(os.fspath(location))
  return Loaded(model, model.config, dict(exported=os.fspath(location)))


def load_image_vae(path: str | os.PathLike, *, ema: bool = False):
  """A float32 `ImageVAE` (`models/image_vae.py`) from a diffusers-format folder or from a
  bootvae_jax workdir that trained an image-VAE config (e.g. `configs/image_vae_tiny.py`; its
  latest checkpoint, `ema` for its EMA weights): the frozen image VAE of the CV-VAE
  regulariser (`config.compat.image_vae`) and of inflation (`config.init_checkpoint`)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from bootvae_jax.models import image_vae  # pylint: disable=g-import-not-at-top

  kind = kind_of(path)
  if kind == "diffusers":
    return load(path, kind=kind).model
  if kind != "workdir":
    raise UserError(
        f"{path} holds {kind} weights, not an image VAE: use a diffusers VAE folder"
        " (config.json + diffusion_pytorch_model.safetensors) or a bootvae_jax workdir"
        " trained with an image-VAE config (configs/image_vae_tiny.py)"
    )
  build = lambda model_config: image_vae.ImageVAE(model_config, rngs=nnx.Rngs(0))
  model, _, _ = _workdir_model(path, None, ema, build)
  return model


# ----------------------------------------------------------------------------------------------
# The command lines' model flags.


def define_model_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--workdir [--step, --ema], or --official with --weights and --model_config: how every
  command line (reconstruct, evaluate, export) names its model."""
  flags.DEFINE_string(
      "workdir", None, "Training workdir (its checkpoints/).", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "step", None, "Checkpoint step in --workdir (default: the latest).", flag_values=flag_values
  )
  flags.DEFINE_bool(
      "ema", False, "Use the EMA parameters of the --workdir checkpoint.", flag_values=flag_values
  )
  flags.DEFINE_enum(
      "official",
      None,
      list(OFFICIAL_KINDS),
      "Load released weights of this kind instead of a workdir.",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "weights", None, "Official weights (.safetensors or .ckpt).", flag_values=flag_values
  )
  flags.DEFINE_string("model_config", None, "Official config.json.", flag_values=flag_values)
  flags.DEFINE_string(
      "official_config", None, "Deprecated name of --model_config.", flag_values=flag_values
  )


def load_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Loaded:
  """The model the `define_model_flags` flags name (one `UserError` line when they do not)."""
  args = flag_values
  model_config = args.model_config
  if args.official_config:
    print("warning: --official_config is deprecated; use --model_config", file=sys.stderr)
    if model_config and model_config != args.official_config:
      raise UserError("--official_config is the old name of --model_config; give only one")
    model_config = args.official_config
  if bool(args.workdir) == bool(args.official):
    raise UserError(
        "give either --workdir (a training run) or --official with --weights and"
        " --model_config (released weights)"
    )
  if args.workdir:
    return load(args.workdir, step=args.step, ema=args.ema, kind="workdir")
  if not args.weights or not model_config:
    raise UserError(f"--official={args.official} needs --weights and --model_config")
  return load(args.weights, config_path=model_config, kind=args.official)
