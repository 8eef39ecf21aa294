"""The tiny trainable config shared by the training tests (seconds per run on 2 CPU cores)."""

import pytest

import tiny


@pytest.fixture
def config():
  """6 steps of the tiny model on 5-frame clips, a log line every 2 steps and a checkpoint
  every 3."""
  config = tiny.tiny_train_config(steps=6, num_frames=5, num_clips=64)
  config.log_every = 2
  config.checkpoint_every = 3
  return config
