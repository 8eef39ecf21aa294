"""bootvae_jax: causal 3D video autoencoders (video tokenizers) in JAX/Flax NNX.

Implements ProMAG progressive growth, the CV-VAE latent-compatibility regulariser and the
OD-VAE architecture variants over one config-driven model library (`bootvae_jax.models`).

The two entry points for models (imported on first use, so `import bootvae_jax` stays light):

  model = bootvae_jax.build_model(config.model)              # random init; base or ProMAG-grown
  model, config = bootvae_jax.load_model(workdir, step=None, ema=False)   # a trained run
  bootvae_jax.export(model, config.model, "exported/")       # PyTorch (interop/torch_model.py)

Any other model path (released CV-VAE / OD-VAE weights, a diffusers VAE folder, an exported
folder) opens with `bootvae_jax.loading.load(path)`.
"""

__version__ = "0.1.0"

__all__ = ["build_model", "export", "load_model"]

_LAZY = {
    "build_model": ("bootvae_jax.models.progressive", "build_model"),
    "load_model": ("bootvae_jax.loading", "load_model"),
    # `python -m bootvae_jax.export` is the CLI; the function is `bootvae_jax.export(...)`.
    "export": ("bootvae_jax.interop.exported", "export"),
}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
  raise AttributeError(f"module 'bootvae_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
