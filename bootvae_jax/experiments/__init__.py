"""Experiments: scripts that train and compare runs of the framework and write results/."""

from bootvae_jax.cli import define_flag  # pylint: disable=unused-import
