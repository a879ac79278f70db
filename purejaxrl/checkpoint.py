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
"""

from __future__ import annotations

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

FORMAT_VERSION = 2  # 2: TrainState carries env_params (issue 11)
STATE_ITEM, INFO_ITEM = "state", "info"
MANIFEST = "MANIFEST.sha256.json"  # in each step folder; lists every other file in it
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


def _write_manifest(step_dir: Path) -> None:
    """Lists every file of the finalised `step_dir` in its MANIFEST, written atomically."""
    files = {}
    for f in sorted(step_dir.rglob("*")):
        if not f.is_file() or (f.parent == step_dir and f.name.startswith(MANIFEST)):
            continue  # folders, and the manifest itself (or a temp file of an earlier attempt)
        rel = f.relative_to(step_dir).as_posix()
        files[rel] = {"size": f.stat().st_size, "sha256": _file_sha256(f)}
    record = {
        "format": MANIFEST_FORMAT,
        "step": int(step_dir.name),
        "files": files,
        "files_sha256": _listing_sha256(files),
    }
    tmp = step_dir / f"{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)
    _fsync_dir(step_dir)


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


def _verify_files(step_dir: Path) -> None:
    """Checks every file in `step_dir`'s MANIFEST (presence, size, SHA-256) before orbax reads
    any of them; raises a one-line CheckpointError naming the first bad file."""
    bad = f"corrupt checkpoint at {step_dir}: file"
    try:
        record = json.loads((step_dir / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"incomplete checkpoint at {step_dir}: file {MANIFEST} is missing (its save was "
            "interrupted, or the file was deleted), so the files cannot be verified"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{bad} {MANIFEST} is unreadable ({type(e).__name__}: {_one_line(e)})"
        ) from None
    try:
        files, step = record["files"], int(record["step"])
        entries = sorted((rel, int(e["size"]), str(e["sha256"])) for rel, e in files.items())
        intact = record["format"] == MANIFEST_FORMAT
        intact = intact and record["files_sha256"] == _listing_sha256(files)
    except (TypeError, KeyError, ValueError, AttributeError):
        intact = False
    if not intact:
        raise CheckpointError(f"{bad} {MANIFEST} fails its own checksum or is incomplete")
    if str(step) != step_dir.name:
        raise CheckpointError(
            f"{bad} {MANIFEST} belongs to update step {step}, not {step_dir.name} "
            "(was the folder renamed?)"
        )
    for rel, size, _ in entries:  # stat everything first: cheap, and names a missing file first
        path = step_dir / rel
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
        if _file_sha256(step_dir / rel) != sha:
            raise CheckpointError(
                f"{bad} {rel} fails its checksum (same size, {size} bytes, other contents)"
            )


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


# --------------------------------------------------------------------------- save


def save(directory, state, config, metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes `state` (a TrainState, seed-batched or not) and its config atomically.

    Returns the step folder `directory/<update_step>`. `metadata` (JSON-serialisable) is stored
    under info["extra"]. Raises CheckpointError if that update_step, or a later one, is already
    saved there. Unfinished steps (no manifest) at or after update_step are removed first; all
    other steps are removed once this one and its manifest are written.
    """
    directory = Path(directory).absolute()
    update_step = int(np.max(jax.device_get(state.update_step)))
    info = {
        "format": FORMAT_VERSION,
        "algo": algo_name(config),
        "config": C.to_dict(config),
        "num_seeds": _num_seeds(state),
        "update_step": update_step,
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "orbax": ocp.__version__,
        },
        "shapes": shapes(state),
        "digest": digest(state),
        "extra": dict(metadata or {}),
    }
    try:
        info = _jsonable(info)
    except TypeError as e:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {e}") from None
    existing = _step_dirs(directory)
    complete = [step for step, d in existing.items() if _has_manifest(d)]
    if update_step in complete:
        raise CheckpointError(f"{directory} already holds a checkpoint at update {update_step}")
    if complete and max(complete) > update_step:
        raise CheckpointError(
            f"{directory} already holds a later checkpoint (update {max(complete)}) than this one "
            f"(update {update_step})"
        )
    for step, d in existing.items():
        if step >= update_step and step not in complete:
            _remove_step(d)  # an unfinished save; orbax would refuse or skip this step otherwise
    # Orbax keeps every step; older ones are removed below, only once this one is complete.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    with ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, INFO_ITEM)) as m:
        saved = m.save(
            update_step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), INFO_ITEM: ocp.args.JsonSave(info)}
            ),
        )
        m.wait_until_finished()
    step_dir = directory / str(update_step)
    if not saved or not step_dir.is_dir():
        raise CheckpointError(f"orbax did not save update {update_step} in {directory}")
    _write_manifest(step_dir)
    for step, d in _step_dirs(directory).items():
        if step != update_step:
            _remove_step(d)
    return step_dir


def _step_dirs(directory: Path) -> dict[int, Path]:
    """{update_step: folder} for every step folder orbax finalised (with a manifest or not)."""
    if not directory.is_dir():
        return {}
    try:
        return {step: directory / str(step) for step in ocp.utils.checkpoint_steps(directory)}
    except Exception as e:  # unreadable folder names and the like
        raise CheckpointError(f"cannot list checkpoints in {directory}: {e}") from None


def _remove_step(step_dir: Path) -> None:
    """Deletes a step folder, its manifest first: a half-deleted step is never 'complete'."""
    (step_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(step_dir)


# --------------------------------------------------------------------------- load


class _QuietRestore:
    """Lowers absl logging during a restore (orbax logs a warning per failed read)."""

    def __enter__(self):
        self._level = logging.getLogger("absl").level
        logging.getLogger("absl").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        logging.getLogger("absl").setLevel(self._level)
        return False


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
    steps = _step_dirs(directory)
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {directory}")
    complete = [step for step, d in steps.items() if _has_manifest(d)]
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


def _restore(path: Path, **items):
    with _QuietRestore():
        try:
            checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            return checkpointer.restore(path, args=ocp.args.Composite(**items))
        except Exception as e:
            _ignore_closed_event_loop_noise()
            raise CheckpointError(
                f"corrupt or unreadable checkpoint at {path}: {type(e).__name__}: {_one_line(e)}"
            ) from e


def read_info(directory) -> dict:
    """The JSON info of the newest checkpoint in `directory` (no agent needed).

    Verifies every file of that step against its manifest first (see the module docstring).
    """
    return _verified_info(directory)[1]


def _verified_info(directory) -> tuple[Path, dict]:
    """(step folder, info) of the newest complete step, its files verified before orbax reads."""
    path = Path(directory).absolute() / str(latest_step(directory))
    _verify_files(path)
    info = _restore(path, **{INFO_ITEM: ocp.args.JsonRestore()})[INFO_ITEM]
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
    directory = Path(directory).absolute()
    if hasattr(agent_or_config, "init") and hasattr(agent_or_config, "config"):
        agent = agent_or_config
        config = agent.config
    else:
        config = agent_or_config
        agent = None
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
    expected = shapes(abstract)
    if expected != info["shapes"]:
        saved_shapes = info["shapes"]
        differ = sorted(
            {k for k in {*expected, *saved_shapes} if expected.get(k) != saved_shapes.get(k)}
        )
        listed = "; ".join(
            f"{k}: checkpoint {saved_shapes.get(k, 'absent')} vs agent {expected.get(k, 'absent')}"
            for k in differ
        )
        raise CheckpointError(
            f"checkpoint at {path} holds arrays of other shapes than this agent builds; was it "
            f"saved by other agent code (versions {info.get('versions')})? "
            f"{len(differ)} differ: {listed[:600]}"
        )
    state = _restore(path, **{STATE_ITEM: ocp.args.StandardRestore(abstract)})[STATE_ITEM]
    if digest(state) != info["digest"]:
        raise CheckpointError(f"corrupt checkpoint at {path}: array contents fail their checksum")
    return state, info
