"""`core/filesystem.py`: URL paths reach etils.epath unchanged; nothing local is made of them."""

import os

import pytest

from bootvae_jax import cli
from bootvae_jax.core import filesystem


def test_a_url_output_folder_is_copied_through_epath(fake_gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with filesystem.local_output_dir("gs://bucket/report") as local:
    assert not local.startswith("gs:")
    os.makedirs(os.path.join(local, "worst"))
    open(os.path.join(local, "metrics.json"), "w").write("{}")
    open(os.path.join(local, "worst", "a.mp4"), "wb").write(b"video")
  remote = fake_gcs.root / "bucket" / "report"
  assert (remote / "metrics.json").read_text() == "{}"
  assert (remote / "worst" / "a.mp4").read_bytes() == b"video"
  assert "gs://bucket/report/worst/a.mp4" in fake_gcs.seen
  assert not list(tmp_path.glob("gs:*")) and not os.path.exists(local)

  (fake_gcs.root / "bucket" / "in.bin").write_bytes(b"input")
  with filesystem.local_input_file("gs://bucket/in.bin") as local:
    assert open(local, "rb").read() == b"input"


def test_a_failed_block_copies_nothing(fake_gcs):
  with pytest.raises(RuntimeError):
    with filesystem.local_output_file("gs://bucket/x.mp4") as local:
      open(local, "wb").write(b"half")
      raise RuntimeError("the reconstruction failed")
  assert not (fake_gcs.root / "bucket" / "x.mp4").exists()


def test_an_unwritable_url_is_a_user_error(fake_gcs, tmp_path, monkeypatch):
  def refused(*args, **kwargs):
    raise RuntimeError("403 Forbidden: no access to bucket\nlong details")

  local = tmp_path / "f"
  local.write_bytes(b"x")
  monkeypatch.setattr(type(filesystem.path("gs://bucket/f")), "open", refused)
  with pytest.raises(cli.UserError, match=r"^gs://bucket/f: cannot be written \(403 Forbidden"):
    filesystem.copy_to(local, "gs://bucket/f")


def test_output_checks_name_the_flag_and_the_path(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(cli.UserError, match=f"^--out={tmp_path / 'file'} is an existing file"):
    filesystem.check_output_dir("out", tmp_path / "file")
  with pytest.raises(
      cli.UserError, match=f"^--out={tmp_path / 'file'}/x: {tmp_path / 'file'} is a"
  ):
    filesystem.check_output_dir("out", tmp_path / "file" / "x")
  filesystem.check_output_dir("out", tmp_path / "new" / "folder")  # made later
  filesystem.check_output_file("output", "gs://bucket/x.mp4")  # checked by its write
