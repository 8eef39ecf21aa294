"""Video input pipeline on grain: video folders (PyAV), TFDS, images, synthetic clips.

  batches = make_train_batches(config.data, mesh=mesh, seed=config.seed)
  batch = next(batches)          # {'video': (B, T, H, W, 3) float32 in [-1, 1], global}
  eval_clips = make_eval_clips(config.data)   # (N, T, H, W, 3) float32, deterministic

`config.default_config()` is the `config.data` subtree and `config.validate` checks it
against a model; `python -m bootvae_jax.data.preview` shows what a config feeds the model.
"""

from bootvae_jax.data.config import default_config
from bootvae_jax.data.config import validate
from bootvae_jax.data.pipeline import build_train_dataset
from bootvae_jax.data.pipeline import make_eval_clips
from bootvae_jax.data.pipeline import make_train_batches
from bootvae_jax.data.pipeline import TrainBatches

__all__ = [
    "TrainBatches",
    "build_train_dataset",
    "default_config",
    "make_eval_clips",
    "make_train_batches",
    "validate",
]
