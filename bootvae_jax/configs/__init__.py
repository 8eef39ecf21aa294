"""The shipped training configs, one module per experiment, each with `get_config()`.

Pass one to the trainer by path. From the repository root `configs/` is this folder (a
symbolic link), so the short form works:

  python -m bootvae_jax.main --config=configs/promag_4x.py --workdir=workdirs/promag_4x

From anywhere else (e.g. with the package installed) use the file's own path:

  python -m bootvae_jax.main --config="$(python -c 'import bootvae_jax.configs as c;
      print(c.__path__[0])')/promag_8x.py" --workdir=...

or import them: `from bootvae_jax.configs import promag_8x; config = promag_8x.get_config()`.
The configs import each other as `bootvae_jax.configs.<name>`, so they load from any working
directory.

  demo                 tiny ProMAG base on synthetic video (the README's first command)
  promag_4x / _8x / _16x  ProMAG stages I, II, III (each grows the previous stage's workdir)
  direct_8x / _16x     the same architectures trained from scratch (the paper's baselines)
  cvvae                CV-VAE's released architecture and recipe
  odvae                OD-VAE variants 1-4 (`--config=configs/odvae.py:2`), published recipe
  data_preview_example the smallest config `python -m bootvae_jax.data.preview` accepts
"""
