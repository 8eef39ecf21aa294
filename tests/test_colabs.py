"""Executes every notebook in colabs/ on tiny settings (code cells in order, one namespace)."""

import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colabs").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, fixtures_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("BOOTVAE_FIXTURES", str(fixtures_dir))
  monkeypatch.setenv("BOOTVAE_NUM_FRAMES", "17")
  monkeypatch.chdir(tmp_path)
  cells = json.loads(path.read_text())["cells"]
  namespace = {"__name__": "__colab__"}
  for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
    exec(compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"), namespace)
  assert namespace["recon"].shape == namespace["video"].shape
  assert len(namespace["scores"]) >= 2
