"""Smallest config with a `data` subtree, for `python -m bootvae_jax.data.preview`.

  python -m bootvae_jax.data.preview --config=configs/data_preview_example.py \
      --num_batches=2 --out=/tmp/preview \
      --config.data.source=video_folder --config.data.path=/path/to/videos
"""

import ml_collections

from bootvae_jax.data import config as data_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config.default_config()
  return config
