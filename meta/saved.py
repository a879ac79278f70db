"""Learned objects (LPO drifts, LPG rules) saved as folders others can load and trust.

A saved folder holds the parameters (orbax StandardSave), an info record (JSON: what the object
is, what it was trained on, the arrays' shapes and a digest of their contents) and
`MANIFEST.sha256.json`, the size and SHA-256 of every file orbax wrote (the manifest of
`purejaxrl.checkpoint`, without a step). `write` builds the folder beside its destination and
moves it into place, so a reader never sees half a save; `read_info` checks the manifest before
orbax reads anything; `read_params` restores into the shapes the caller's code makes and checks
the digest. Errors are `purejaxrl.checkpoint.CheckpointError` (a ValueError) naming the folder
and the file or field at fault.

    KIND = saved.Kind("drift", "lpo.save")
    saved.write(path, params, record, KIND)
    info = saved.read_info(path, KIND, required={"format", "shapes", "digest"}, version=1)
    params = saved.read_params(path, KIND, abstract_params, info)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from purejaxrl import checkpoint

PARAMS_ITEM, INFO_ITEM = "params", "info"
MANIFEST = checkpoint.MANIFEST  # every file orbax wrote, with its size and SHA-256


class Kind(NamedTuple):
    """How errors name the object: `what` ("drift", "LPG rule") and its saver ("lpo.save")."""

    what: str
    saver: str


def write(path, params, record: Mapping[str, Any], kind: Kind) -> Path:
    """Saves `params` (fetched to the host) and the JSON `record` with their "shapes" and "digest"
    added (what `read_params` checks) as the folder `path` (absolute path returned).

    ValueError when `record` is not JSON-serialisable, or when `path` exists and is not a saved
    folder (never overwritten); an existing saved folder is replaced.
    """
    path = Path(path).absolute()
    params = jax.device_get(params)
    record = {**record, "shapes": checkpoint.shapes(params), "digest": checkpoint.digest(params)}
    try:
        record = json.loads(json.dumps(record))
    except TypeError as e:
        raise ValueError(f"{kind.saver}: info is not JSON-serialisable: {e}") from None
    if path.exists() and not (path / MANIFEST).is_file():
        raise ValueError(
            f"{kind.saver}: {path} exists and is not a saved {kind.what}; not overwriting it"
        )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = {PARAMS_ITEM: ocp.args.StandardSave(params), INFO_ITEM: ocp.args.JsonSave(record)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(tmp, args=ocp.args.Composite(**items))
    checkpoint.write_manifest(tmp)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def read_info(path, kind: Kind, required: Iterable[str], version) -> dict:
    """The info record of the folder `path`, after its manifest checks out; CheckpointError for a
    missing folder, a damaged file, missing `required` keys or a format other than `version`."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise checkpoint.CheckpointError(
            f"no saved {kind.what} at {path}: the folder does not exist"
        )
    if not (path / MANIFEST).is_file():
        raise checkpoint.CheckpointError(
            f"{path} holds no saved {kind.what}: {MANIFEST} is missing (not written by "
            f"{kind.saver}, or its save was interrupted)"
        )
    what = f"saved {kind.what}"
    checkpoint.verify_manifest(path, what)
    info = checkpoint.restore_items(path, what, **{INFO_ITEM: ocp.args.JsonRestore()})[INFO_ITEM]
    if not isinstance(info, dict) or not set(required) <= set(info):
        raise checkpoint.CheckpointError(f"corrupt {what} at {path}: its info is incomplete")
    if info.get("format") != version:
        raise checkpoint.CheckpointError(
            f"{what} at {path} has format {info.get('format')!r}; this code reads {version!r}"
        )
    return info


def read_params(path, kind: Kind, abstract, info: Mapping[str, Any]):
    """The parameters of the folder `path`, restored into `abstract`'s shapes (what the caller's
    code makes for `info`); CheckpointError when the saved shapes or the contents' digest differ."""
    return checkpoint.restore_tree(
        Path(path).absolute(),
        abstract,
        info,
        item=PARAMS_ITEM,
        what=f"saved {kind.what}",
        hint=" than its info says",
    )
