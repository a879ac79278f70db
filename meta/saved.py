"""Learned objects (LPO drifts, LPG rules) saved as folders others can load and trust.

A saved folder holds the parameters (orbax StandardSave), an info record (JSON: what the object
is, what it was trained on, the arrays' shapes and a digest of their contents) and
`MANIFEST.sha256.json`, the size and SHA-256 of every file orbax wrote. `write` builds the folder
beside its destination and moves it into place, so a reader never sees half a save; `read_info`
checks the manifest before orbax reads anything; `read_params` restores into the shapes the
caller's code makes and checks the digest. Errors are `purejaxrl.checkpoint.CheckpointError`
(a ValueError) naming the folder and the file or field at fault.

    KIND = saved.Kind("drift", "lpo.save")
    saved.write(path, params, record, KIND)
    info = saved.read_info(path, KIND, required={"format", "shapes", "digest"}, version=1)
    params = saved.read_params(path, KIND, abstract_params, info)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orbax.checkpoint as ocp

from purejaxrl import checkpoint

PARAMS_ITEM, INFO_ITEM = "params", "info"
MANIFEST = "MANIFEST.sha256.json"  # every file orbax wrote, with its size and SHA-256


class Kind(NamedTuple):
    """How errors name the object: `what` ("drift", "LPG rule") and its saver ("lpo.save")."""

    what: str
    saver: str


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def listing(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file under `folder` but the manifest."""
    return {
        f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": _file_sha256(f)}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }


def verify(folder: Path, kind: Kind) -> None:
    """Every file in the folder's manifest is present with its saved size and SHA-256."""
    bad = f"corrupt saved {kind.what} at {folder}:"
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        entries = sorted((str(rel), int(e["size"]), str(e["sha256"])) for rel, e in files.items())
    except FileNotFoundError:
        raise checkpoint.CheckpointError(
            f"{folder} holds no saved {kind.what}: {MANIFEST} is missing (not written by "
            f"{kind.saver}, or its save was interrupted)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise checkpoint.CheckpointError(
            f"{bad} {MANIFEST} is unreadable ({type(e).__name__})"
        ) from None
    for rel, size, sha in entries:
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise checkpoint.CheckpointError(f"{bad} {MANIFEST} lists a path outside it: {rel!r}")
        if not path.is_file():
            raise checkpoint.CheckpointError(f"{bad} file {rel} is missing")
        if path.stat().st_size != size or _file_sha256(path) != sha:
            raise checkpoint.CheckpointError(f"{bad} file {rel} fails its checksum")


def write(path, params, record: Mapping[str, Any], kind: Kind) -> Path:
    """Saves host `params` and the JSON `record` as the folder `path` (absolute path returned).

    ValueError when `record` is not JSON-serialisable, or when `path` exists and is not a saved
    folder (never overwritten); an existing saved folder is replaced.
    """
    path = Path(path).absolute()
    try:
        record = json.loads(json.dumps(dict(record)))
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
    manifest = {"format": 1, "files": listing(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def _restore(path: Path, kind: Kind, **items):
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(path, args=ocp.args.Composite(**items))
    except Exception as e:
        line = (str(e).strip().splitlines() or [""])[0][:300]
        raise checkpoint.CheckpointError(
            f"corrupt or unreadable saved {kind.what} at {path}: {type(e).__name__}: {line}"
        ) from e


def read_info(path, kind: Kind, required: Iterable[str], version) -> dict:
    """The info record of the folder `path`, after its manifest checks out; CheckpointError for a
    missing folder, a damaged file, missing `required` keys or a format other than `version`."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise checkpoint.CheckpointError(
            f"no saved {kind.what} at {path}: the folder does not exist"
        )
    verify(path, kind)
    info = _restore(path, kind, **{INFO_ITEM: ocp.args.JsonRestore()})[INFO_ITEM]
    if not isinstance(info, dict) or not set(required) <= set(info):
        raise checkpoint.CheckpointError(
            f"corrupt saved {kind.what} at {path}: its info is incomplete"
        )
    if info.get("format") != version:
        raise checkpoint.CheckpointError(
            f"saved {kind.what} at {path} has format {info.get('format')!r}; this code reads "
            f"{version!r}"
        )
    return info


def read_params(path, kind: Kind, abstract, info: Mapping[str, Any]):
    """The parameters of the folder `path`, restored into `abstract`'s shapes (what the caller's
    code makes for `info`); CheckpointError when the saved shapes or the contents' digest differ."""
    path = Path(path).absolute()
    if checkpoint.shapes(abstract) != info["shapes"]:
        raise checkpoint.CheckpointError(
            f"saved {kind.what} at {path} holds arrays of other shapes than its info says: "
            f"{info['shapes']}"
        )
    params = _restore(path, kind, **{PARAMS_ITEM: ocp.args.StandardRestore(abstract)})
    params = params[PARAMS_ITEM]
    if checkpoint.digest(params) != info["digest"]:
        raise checkpoint.CheckpointError(
            f"corrupt saved {kind.what} at {path}: array contents fail their checksum"
        )
    return params
