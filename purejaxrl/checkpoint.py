"""Orbax checkpoints of a (seed-batched) TrainState together with the config that made it.

    checkpoint.save("runs/x/checkpoint", out.state, cfg, {"seed": 0})
    state, info = checkpoint.load("runs/x/checkpoint", agent, num_seeds=4)
    out = jax.jit(jax.vmap(lambda s: agent.run(s, remaining)))(state)   # continues exactly

Layout: `directory/<update_step>/{state, info}`, written by an `orbax.checkpoint.CheckpointManager`
that keeps one step. Orbax writes each step into a temporary folder and renames it only when
complete, and deletes the previous step only after the new one is finalised, so an interrupted or
failed save never leaves a half-written checkpoint that looks valid, nor loses the last good one.

`info` (JSON) holds the algorithm name, the full config, num_seeds, update_step, library versions, a
fingerprint of every array's path, shape and dtype, and a SHA-256 digest of the array contents, so
`load` rejects a checkpoint for a different config (naming the differing fields), a missing one, and
a corrupt one (orbax's read errors or a digest mismatch) with `CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from purejaxrl import a2c, ppo
from purejaxrl import config as C

FORMAT_VERSION = 1
STATE_ITEM, INFO_ITEM = "state", "info"

# Static config fields that may change between save and load: they set no array shape
# (extending `total_timesteps` is how a finished run is continued).
RESUMABLE_FIELDS = frozenset({"total_timesteps"})

# algo name <-> (config class, make_agent); other algorithms register themselves here.
ALGOS: dict[str, tuple[type, Any]] = {
    "ppo": (ppo.PPOConfig, ppo.make_agent),
    "a2c": (a2c.A2CConfig, a2c.make_agent),
}


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or was saved for a different config shape."""


def register_algo(name: str, config_cls: type, make_agent) -> None:
    """Makes `name` loadable by config (used by `load` and by experiments.train)."""
    ALGOS[name] = (config_cls, make_agent)


def algo_name(config) -> str:
    for name, (cls, _) in ALGOS.items():
        if type(config) is cls:
            return name
    raise ValueError(f"no registered algorithm for config type {type(config).__name__}")


def make_agent(algo: str, config, **kwargs):
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {sorted(ALGOS)}")
    return ALGOS[algo][1](config, **kwargs)


def config_from_dict(algo: str, values: Mapping[str, Any]):
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {sorted(ALGOS)}")
    return C.from_dict(ALGOS[algo][0], values)


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


# --------------------------------------------------------------------------- save


def save(directory, state, config, metadata: Mapping[str, Any] | None = None) -> Path:
    """Writes `state` (a TrainState, seed-batched or not) and its config atomically.

    Returns the step folder `directory/<update_step>`. `metadata` (JSON-serialisable) is stored
    under info["extra"]. Raises CheckpointError if that update_step is already saved there.
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
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    with ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, INFO_ITEM)) as m:
        if update_step in m.all_steps():
            raise CheckpointError(f"{directory} already holds a checkpoint at update {update_step}")
        m.save(
            update_step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), INFO_ITEM: ocp.args.JsonSave(info)}
            ),
        )
        m.wait_until_finished()
    return directory / str(update_step)


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
    """The newest finalised step in `directory`; CheckpointError if there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: directory does not exist")
    try:
        steps = ocp.utils.checkpoint_steps(directory)
    except Exception as e:  # unreadable folder names and the like
        raise CheckpointError(f"cannot list checkpoints in {directory}: {e}") from None
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {directory}")
    return max(steps)


def _restore(path: Path, **items):
    with _QuietRestore():
        try:
            checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
            return checkpointer.restore(path, args=ocp.args.Composite(**items))
        except Exception as e:
            _ignore_closed_event_loop_noise()
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise CheckpointError(
                f"corrupt or unreadable checkpoint at {path}: {type(e).__name__}: {msg}"
            ) from e


def read_info(directory) -> dict:
    """The JSON info of the newest checkpoint in `directory` (no agent needed)."""
    path = Path(directory).absolute() / str(latest_step(directory))
    info = _restore(path, **{INFO_ITEM: ocp.args.JsonRestore()})[INFO_ITEM]
    required = {"format", "algo", "config", "num_seeds", "update_step", "shapes", "digest"}
    if not isinstance(info, dict) or not required <= set(info):
        raise CheckpointError(f"corrupt checkpoint at {path}: its info record is incomplete")
    if info["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint at {path} has format {info['format']}, this code reads {FORMAT_VERSION}"
        )
    return info


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
    info = read_info(directory)
    path = directory / str(info["update_step"])

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


from purejaxrl import sac  # noqa: E402, F401  (registers "sac" in ALGOS; sac imports us back)
