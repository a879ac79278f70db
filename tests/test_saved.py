"""meta/saved.py: folders of learned objects with a SHA-256 manifest (round trip, refusals, the
manifest shared with purejaxrl/checkpoint.py, folders saved before it)."""

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from meta import saved
from purejaxrl import checkpoint

KIND = saved.Kind("widget", "widgets.save")
PARAMS = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}


def record(params):
    return {"format": 7, "shapes": checkpoint.shapes(params), "digest": checkpoint.digest(params)}


def test_round_trip_and_replace(tmp_path):
    path = saved.write(tmp_path / "a", PARAMS, record(PARAMS), KIND)
    info = saved.read_info(path, KIND, {"format", "shapes", "digest"}, 7)
    out = saved.read_params(path, KIND, PARAMS, info)
    for k in PARAMS:
        np.testing.assert_array_equal(out[k], PARAMS[k])
    files = json.loads((path / saved.MANIFEST).read_text())["files"]
    assert files == checkpoint.file_listing(path) and files
    other = {"w": PARAMS["w"] + 1, "b": PARAMS["b"]}
    saved.write(path, other, record(other), KIND)  # a saved folder is replaced
    info = saved.read_info(path, KIND, (), 7)
    np.testing.assert_array_equal(saved.read_params(path, KIND, PARAMS, info)["w"], other["w"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_refusals_name_the_object_and_the_fault(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no saved widget at .*does not exist"):
        saved.read_info(tmp_path / "missing", KIND, (), 7)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="widgets.save: .* is not a saved widget; not overwriting"):
        saved.write(tmp_path / "plain", PARAMS, record(PARAMS), KIND)
    with pytest.raises(checkpoint.CheckpointError, match="MANIFEST.sha256.json is missing"):
        saved.read_info(tmp_path / "plain", KIND, (), 7)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        saved.write(tmp_path / "x", PARAMS, {"f": object()}, KIND)
    path = saved.write(tmp_path / "a", PARAMS, record(PARAMS), KIND)
    with pytest.raises(checkpoint.CheckpointError, match="format 7; this code reads 8"):
        saved.read_info(path, KIND, (), 8)
    with pytest.raises(checkpoint.CheckpointError, match="its info is incomplete"):
        saved.read_info(path, KIND, {"trained_on"}, 7)
    info = saved.read_info(path, KIND, (), 7)
    with pytest.raises(checkpoint.CheckpointError, match="other shapes"):
        saved.read_params(path, KIND, {"w": jnp.zeros((3, 2)), "b": jnp.ones(3)}, info)
    with pytest.raises(checkpoint.CheckpointError, match="array contents fail their checksum"):
        saved.read_params(path, KIND, PARAMS, dict(info, digest="0" * 64))
    _tamper(path)
    with pytest.raises(
        checkpoint.CheckpointError, match="corrupt saved widget .* fails its checksum"
    ):
        saved.read_info(path, KIND, (), 7)


def _tamper(folder: Path) -> None:
    """Appends a byte to the largest file the manifest lists."""
    victim = max((p for p in folder.rglob("*") if p.is_file() and p.name != saved.MANIFEST),
                 key=lambda p: p.stat().st_size)  # fmt: skip
    victim.write_bytes(victim.read_bytes() + b"x")


def test_saved_folders_and_checkpoints_share_one_manifest(tmp_path):
    # A folder written by meta.saved verifies with purejaxrl.checkpoint's verify_manifest...
    path = saved.write(tmp_path / "a", PARAMS, record(PARAMS), KIND)
    checkpoint.verify_manifest(path, "saved widget")
    # ...and a checkpoint step folder's manifest verifies with meta.saved's read_info.
    step_dir = checkpoint.save_tree(tmp_path / "ck", 3, PARAMS, {"format": 7}, unit="step")
    assert step_dir == (tmp_path / "ck" / "3").absolute()
    assert json.loads((step_dir / checkpoint.MANIFEST).read_text())["step"] == 3
    checkpoint.verify_manifest(step_dir, step=3)
    assert saved.read_info(step_dir, KIND, {"shapes", "digest"}, 7)["format"] == 7
    _, info = checkpoint.read_latest(tmp_path / "ck")
    restored = checkpoint.restore_tree(step_dir, PARAMS, info)
    np.testing.assert_array_equal(restored["w"], PARAMS["w"])
    # A tampered file is refused by both readers, naming the file.
    for folder in (path, step_dir):
        _tamper(folder)
        with pytest.raises(checkpoint.CheckpointError, match="fails its checksum"):
            checkpoint.verify_manifest(folder)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt saved widget .* fails its"):
        saved.read_info(path, KIND, (), 7)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt checkpoint .* fails its"):
        checkpoint.read_latest(tmp_path / "ck")


def test_folders_saved_before_the_shared_manifest_still_load(tmp_path):
    """meta/learned's drifts were saved with a manifest of only {format, files}; they load, and
    a tampered one is still refused."""
    from meta import lpo

    old = json.loads((lpo.shipped_path("lpo-cpu") / saved.MANIFEST).read_text())
    assert set(old) == {"format", "files"}
    params, info = lpo.load(lpo.shipped_path("lpo-cpu"))
    assert info["features"] == "lpo-8"
    copy = Path(shutil.copytree(lpo.shipped_path("lpo-cpu"), tmp_path / "lpo-cpu"))
    _tamper(copy)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt saved drift .* fails its"):
        lpo.load(copy)
