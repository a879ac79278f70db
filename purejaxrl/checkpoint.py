"""Orbax checkpoints of a (seed-batched) TrainState together with the config that made it.

    checkpoint.save("runs/x/checkpoint", out.state, cfg, {"seed": 0})
    state, info = checkpoint.load("runs/x/checkpoint", agent, num_seeds=4)
    out = jax.jit(jax.vmap(lambda s: agent.run(s, remaining)))(state)   # continues exactly

Layout: `directory/<update_step>/{state, info, MANIFEST.sha256.json, orbax's own files}`. Orbax's
`CheckpointManager` writes each step into a temporary folder and renames it only when complete;
`save` then writes `MANIFEST.sha256.json` into the step folder (temp file + os.replace): the
relative path, size and SHA-256 of every file orbax wrote, plus a SHA-256 of that list. Only
then are the other steps deleted, so one complete step is always kept: an interrupted or failed
save never leaves a half-written checkpoint that looks valid, nor loses the last good one.

A step folder without a manifest is an unfinished save (interrupted between orbax's rename and
the manifest, or written before manifests existed): `latest_step` skips it with a warning and
returns the newest complete step, or raises CheckpointError naming the missing manifest if there
is none; the next `save` removes it.

`info` (JSON) holds the algorithm name, the full config, num_seeds, update_step, library versions, a
fingerprint of every array's path, shape and dtype, and a SHA-256 digest of the array contents.

`read_info` and `load` raise CheckpointError (a ValueError), with a one-line message, for a
missing checkpoint, one for a different config (naming the differing fields) and a corrupt one:
before orbax reads anything, every file in the manifest must be present with its saved size and
SHA-256 (the message names the first file that is missing, truncated or altered). Files added to
a step folder after the save are ignored: orbax reads only files that the verified ones name. The
array-content digest in `info` is checked again after the restore. A failed load changes nothing
on disk.

The same primitives serve every saved pytree in the project (ES checkpoints in meta/es.py, learned
objects in meta/saved.py): `save_tree` / `read_latest` / `restore_tree` (a step folder of any
pytree and its JSON info), `step_dirs` / `complete_steps` / `remove_step`, `write_manifest` /
`verify_manifest` (the one file-manifest format) and `restore_items` (orbax's restore, one-line
errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from purejaxrl import config as C
from purejaxrl.algos import (  # noqa: F401  (re-exported: the registry's names used to live here)
    ALGOS,
    config_from_dict,
    make_agent,
)
from purejaxrl.algos import name_of as algo_name
from purejaxrl.algos import register as register_algo  # noqa: F401
from purejaxrl.loop import Agent

FORMAT_VERSION = 2  # 2: TrainState carries env_params (issue 11)
STATE_ITEM, INFO_ITEM = "state", "info"
MANIFEST = "MANIFEST.sha256.json"  # in each step (or meta.saved) folder: every other file in it
MANIFEST_FORMAT = 1

# Static config fields that may change between save and load: they set no array shape
# (extending `total_timesteps` is how a finished run is continued).
RESUMABLE_FIELDS = frozenset({"total_timesteps"})


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or was saved for a different config shape."""


# --------------------------------------------------------------------------- fingerprints


def _jsonable(obj):
    """The value as JSON would give it back (tuples -> lists, keys -> str)."""
    return json.loads(json.dumps(obj))


def static_fields(config) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if not f.metadata.get("pytree_node", True)]


def shapes(tree) -> dict[str, str]:
    """{'.params["params"]...': 'float32[4,64]'} for every leaf (arrays or ShapeDtypeStructs)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {
        jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
        for path, leaf in flat
    }


def digest(tree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (host copy)."""
    h = hashlib.sha256()
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    for path, leaf in flat:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _num_seeds(state) -> int | None:
    step = np.asarray(jax.device_get(state.update_step))
    return None if step.ndim == 0 else int(step.shape[0])


# --------------------------------------------------------------------------- file manifest


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _listing_sha256(files: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def file_listing(folder) -> dict[str, dict]:
    """{relative path: {"size": bytes, "sha256": hex}} of every file under `folder` but its
    manifest (and the manifest's temp files, left by an interrupted write)."""
    folder = Path(folder)
    return {
        f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": _file_sha256(f)}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and not (f.parent == folder and f.name.startswith(MANIFEST))
    }


def write_manifest(folder, step: int | None = None) -> None:
    """Writes `folder/MANIFEST` atomically (temp file, fsync, os.replace): {"format": 1,
    "files": file_listing(folder), "files_sha256": SHA-256 of that listing, "step": step} ("step"
    only in the step folders of a checkpoint directory)."""
    folder = Path(folder)
    files = file_listing(folder)
    record = {"format": MANIFEST_FORMAT, "files": files, "files_sha256": _listing_sha256(files)}
    if step is not None:
        record["step"] = int(step)
    tmp = folder / f"{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _has_manifest(step_dir: Path) -> bool:
    return (step_dir / MANIFEST).is_file()


def _manifest_entries(folder: Path, what: str, step: int | None) -> list[tuple[str, int, str]]:
    """[(relative path, size, sha256)] of `folder`'s manifest, after checking the record itself."""
    bad = f"corrupt {what} at {folder}: file"
    try:
        record = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"incomplete {what} at {folder}: file {MANIFEST} is missing (its save was "
            "interrupted, or the file was deleted), so the files cannot be verified"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{bad} {MANIFEST} is unreadable ({type(e).__name__}: {_one_line(e)})"
        ) from None
    try:
        files, checksum = record["files"], record.get("files_sha256")
        entries = sorted((rel, int(e["size"]), str(e["sha256"])) for rel, e in files.items())
        intact = record["format"] == MANIFEST_FORMAT and (checksum is not None or step is None)
        intact = intact and checksum in (None, _listing_sha256(files))
    except (TypeError, KeyError, ValueError, AttributeError):
        intact = False
    if not intact:
        raise CheckpointError(f"{bad} {MANIFEST} fails its own checksum or is incomplete")
    if step is not None and str(record.get("step")) != str(step):
        raise CheckpointError(
            f"{bad} {MANIFEST} belongs to update step {record.get('step')}, not {step} "
            "(was the folder renamed?)"
        )
    return entries


def verify_manifest(folder, what: str = "checkpoint", step: int | None = None) -> None:
    """Checks every file listed in `folder/MANIFEST` (presence, size, then SHA-256) before
    anything reads them; files not listed are ignored. CheckpointError (one line, "... {what} at
    {folder}: ...") naming the first bad file.

    step: the step a checkpoint's step folder must carry (its manifest must then also carry
    files_sha256); None for a single saved folder (meta.saved), whose listing checksum is checked
    when present (folders saved before it existed have none).
    """
    folder = Path(folder)
    bad = f"corrupt {what} at {folder}: file"
    entries = _manifest_entries(folder, what, step)
    for rel, size, _ in entries:  # stat everything first: cheap, and names a missing file first
        path = folder / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointError(f"{bad} {MANIFEST} lists a path outside the folder: {rel!r}")
        if not path.is_file():
            raise CheckpointError(f"{bad} {rel} is missing ({size} bytes at save)")
        if path.stat().st_size != size:
            raise CheckpointError(
                f"{bad} {rel} fails its checksum (size {path.stat().st_size} vs {size} bytes "
                "at save)"
            )
    for rel, size, sha in entries:
        if _file_sha256(folder / rel) != sha:
            raise CheckpointError(
                f"{bad} {rel} fails its checksum (same size, {size} bytes, other contents)"
            )


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


# --------------------------------------------------------------------------- step folders


def step_dirs(directory) -> dict[int, Path]:
    """{step: folder} for every step folder orbax finalised in `directory` (with a manifest or
    not); {} when `directory` does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    try:
        return {step: directory / str(step) for step in ocp.utils.checkpoint_steps(directory)}
    except Exception as e:  # unreadable folder names and the like
        raise CheckpointError(f"cannot list checkpoints in {directory}: {e}") from None


def complete_steps(directory) -> list[int]:
    """The steps in `directory` whose save finished (their folder has its manifest), ascending."""
    return sorted(step for step, d in step_dirs(directory).items() if _has_manifest(d))


def remove_step(step_dir) -> None:
    """Deletes a step folder, its manifest first: a half-deleted step is never 'complete'."""
    (Path(step_dir) / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(step_dir)


def _flat(tree) -> dict:
    """{"00000": leaf, ...} in tree-flatten order."""
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def save_tree(
    directory, step: int, tree, info: Mapping[str, Any], *, unit: str = "update", flat=False
) -> Path:
    """Writes the pytree `tree` and the JSON `info` (with "shapes" and "digest" of `tree` added)
    as the step folder `directory/<step>`, then its manifest, then removes every other step; an
    interrupted save keeps the previous step (module docstring). Returns the step folder.

    unit: how messages name a step ("update", "generation"). flat: store the leaves as
    {"00000": leaf, ...}, so orbax needs no knowledge of the tree's classes (restore_tree with
    flat=True). CheckpointError if `step`, or a later one, is already saved in `directory`.
    """
    directory = Path(directory).absolute()
    try:
        info = _jsonable({**info, "shapes": shapes(tree), "digest": digest(tree)})
    except TypeError as e:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
    existing = step_dirs(directory)
    complete = sorted(s for s, d in existing.items() if _has_manifest(d))
    if step in complete:
        raise CheckpointError(f"{directory} already holds a checkpoint at {unit} {step}")
    if complete and complete[-1] > step:
        raise CheckpointError(
            f"{directory} already holds a later checkpoint ({unit} {complete[-1]}) than this one "
            f"({unit} {step})"
        )
    for s, d in existing.items():
        if s >= step and s not in complete:
            remove_step(d)  # an unfinished save; orbax would refuse or skip this step otherwise
    # Orbax keeps every step; older ones are removed below, only once this one is complete.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    items = {
        STATE_ITEM: ocp.args.StandardSave(_flat(tree) if flat else tree),
        INFO_ITEM: ocp.args.JsonSave(info),
    }
    with ocp.CheckpointManager(directory, options=options, item_names=tuple(items)) as m:
        saved = m.save(step, args=ocp.args.Composite(**items))
        m.wait_until_finished()
    step_dir = directory / str(step)
    if not saved or not step_dir.is_dir():
        raise CheckpointError(f"orbax did not save {unit} {step} in {directory}")
    write_manifest(step_dir, step)
    for s, d in step_dirs(directory).items():
        if s != step:
            remove_step(d)
    return step_dir


def read_latest(directory, what: str = "checkpoint") -> tuple[Path, Any]:
    """(step folder, JSON info) of the newest complete step in `directory`, its files verified
    against the manifest before orbax reads any (see `latest_step` for unfinished steps)."""
    path = Path(directory).absolute() / str(latest_step(directory))
    verify_manifest(path, what, step=int(path.name))
    return path, restore_items(path, what, **{INFO_ITEM: ocp.args.JsonRestore()})[INFO_ITEM]


def restore_tree(
    path, abstract, info, *, item=STATE_ITEM, flat=False, what="checkpoint", hint=""
) -> Any:
    """The pytree saved as `item` in the folder `path`, restored into `abstract`'s structure,
    shapes and dtypes (arrays or ShapeDtypeStructs; flat: saved with save_tree(flat=True)).
    CheckpointError when `info["shapes"]` differ from `abstract`'s (`hint` is added to that
    message) or the restored arrays fail `info["digest"]`."""
    expected, saved = shapes(abstract), info["shapes"]
    if expected != saved:
        differ = sorted(k for k in {*expected, *saved} if expected.get(k) != saved.get(k))
        listed = "; ".join(
            f"{k}: saved {saved.get(k, 'absent')} vs now {expected.get(k, 'absent')}"
            for k in differ
        )
        raise CheckpointError(
            f"{what} at {path} holds arrays of other shapes{hint}: {len(differ)} differ: "
            f"{listed[:600]}"
        )
    target = abstract
    if flat:
        target = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for k, v in _flat(abstract).items()}
    tree = restore_items(path, what, **{item: ocp.args.StandardRestore(target)})[item]
    if flat:
        leaves = [np.asarray(tree[k]) for k in sorted(tree)]
        tree = jax.tree.unflatten(jax.tree.structure(abstract), leaves)
    if digest(tree) != info["digest"]:
        raise CheckpointError(f"corrupt {what} at {path}: array contents fail their checksum")
    return tree


# --------------------------------------------------------------------------- save


def save(directory, state, config, metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes `state` (a TrainState, seed-batched or not) and its config atomically.

    Returns the step folder `directory/<update_step>`. `metadata` (JSON-serialisable) is stored
    under info["extra"]. Raises CheckpointError if that update_step, or a later one, is already
    saved there. Unfinished steps (no manifest) at or after update_step are removed first; all
    other steps are removed once this one and its manifest are written.
    """
    update_step = int(np.max(jax.device_get(state.update_step)))
    info = {
        "format": FORMAT_VERSION,
        "algo": algo_name(config),
        "config": C.to_dict(config),
        "num_seeds": _num_seeds(state),
        "update_step": update_step,
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "orbax": ocp.__version__},
        "extra": dict(metadata or {}),
    }
    return save_tree(directory, update_step, state, info)


# --------------------------------------------------------------------------- load


@contextlib.contextmanager
def _quiet_absl():
    """Lowers absl logging during a restore (orbax logs a warning per failed read)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


_noise_filter_installed = False


def _ignore_closed_event_loop_noise() -> None:
    """After a failed restore, tensorstore threads may still call into orbax's closed asyncio
    loop; Python reports each as an unraisable 'Event loop is closed'. Drop only those."""
    global _noise_filter_installed
    if _noise_filter_installed:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _noise_filter_installed = True


def latest_step(directory) -> int:
    """The newest complete step (finalised, with its manifest) in `directory`.

    Newer steps without a manifest (unfinished saves) are skipped with a warning; CheckpointError
    if no step is complete. Reads only folder names and checks that the manifests exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: directory does not exist")
    steps = step_dirs(directory)
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {directory}")
    complete = complete_steps(directory)
    unfinished = sorted(
        step for step in steps if step not in complete and step > max(complete, default=-1)
    )
    if not complete:
        raise CheckpointError(
            f"no finished checkpoint in {directory}: step folder {unfinished[-1]} has no {MANIFEST} "
            "(its save was interrupted, it was written before manifests existed, or the file "
            "was deleted)"
        )
    if unfinished:
        warnings.warn(
            f"{directory}: skipping step folder(s) {unfinished} without {MANIFEST} (unfinished "
            f"saves); using step {max(complete)}",
            stacklevel=2,
        )
    return max(complete)


def restore_items(path, what: str = "checkpoint", **items) -> dict:
    """orbax's restore of the named `items` ({name: ocp.args.*Restore}) of the folder `path`;
    CheckpointError ("corrupt or unreadable {what} at {path}: ...", one line) if it fails."""
    with _quiet_absl():
        try:
            checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            return checkpointer.restore(path, args=ocp.args.Composite(**items))
        except Exception as e:
            _ignore_closed_event_loop_noise()
            raise CheckpointError(
                f"corrupt or unreadable {what} at {path}: {type(e).__name__}: {_one_line(e)}"
            ) from e


def read_info(directory) -> dict:
    """The JSON info of the newest checkpoint in `directory` (no agent needed).

    Verifies every file of that step against its manifest first (see the module docstring).
    """
    return _verified_info(directory)[1]


def _verified_info(directory) -> tuple[Path, dict]:
    """(step folder, info) of the newest complete step, its files verified before orbax reads."""
    path, info = read_latest(directory)
    required = {"format", "algo", "config", "num_seeds", "update_step", "shapes", "digest"}
    if not isinstance(info, dict) or not required <= set(info):
        raise CheckpointError(f"corrupt checkpoint at {path}: its info record is incomplete")
    if info["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint at {path} has format {info['format']}, this code reads {FORMAT_VERSION}"
        )
    if str(info["update_step"]) != path.name:
        raise CheckpointError(
            f"corrupt checkpoint at {path}: its info record is for update {info['update_step']}"
        )
    return path, info


def config_mismatch(saved: Mapping[str, Any], config, algo: str | None = None) -> list[str]:
    """'field: checkpoint X vs config Y' for each static field (not RESUMABLE) that differs."""
    current = _jsonable(C.to_dict(config))
    out = []
    if algo is not None and saved.get("algo") not in (None, algo):
        out.append(f"algo: checkpoint {saved.get('algo')!r} vs config {algo!r}")
    for name in static_fields(config):
        if name in RESUMABLE_FIELDS:
            continue
        old, new = saved.get("config", {}).get(name, "<absent>"), current.get(name)
        if old != new:
            out.append(f"{name}: checkpoint {old!r} vs config {new!r}")
    return out


def _abstract_state(agent, num_seeds: int | None):
    key = jax.random.key(0)
    if num_seeds is None:
        return jax.eval_shape(agent.init, key)
    return jax.eval_shape(jax.vmap(agent.init), jax.random.split(key, num_seeds))


def load(directory, agent_or_config, num_seeds: int | None | str = "saved"):
    """Restores the newest checkpoint in `directory` for `agent_or_config`.

    num_seeds: the leading seed axis expected ("saved" = whatever the checkpoint holds; None =
    an unbatched state). Returns (state, info) with `info` the saved JSON record (config,
    update_step, num_seeds, versions, extra=the metadata given to `save`).
    Raises CheckpointError (a ValueError) naming the differing fields when the checkpoint was
    saved for another algorithm, config shape or number of seeds; and when it is missing or corrupt.
    """
    agent = agent_or_config if isinstance(agent_or_config, Agent) else None
    config = agent_or_config if agent is None else agent.config
    algo = algo_name(config)
    path, info = _verified_info(directory)

    problems = config_mismatch(info, config, algo)
    if num_seeds != "saved" and num_seeds != info["num_seeds"]:
        problems.append(f"num_seeds: checkpoint {info['num_seeds']} vs requested {num_seeds}")
    if problems:
        raise CheckpointError(
            f"checkpoint at {path} does not fit this config ({'; '.join(problems)}). These fields "
            "set array shapes or code paths: use the checkpoint's values or start a new run."
        )
    if agent is None:
        agent = make_agent(algo, config)

    abstract = _abstract_state(agent, info["num_seeds"])
    hint = (
        " than this agent builds; was it saved by other agent code (versions "
        f"{info.get('versions')})?"
    )
    return restore_tree(path, abstract, info, hint=hint), info
