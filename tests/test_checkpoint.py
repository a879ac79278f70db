"""Checkpoints: exact round trip and resume, clear errors, manifest-verified files, atomic saves,
untouched run folders."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import command, runs, train
from purejaxrl import checkpoint, ppo
from purejaxrl.checkpoint import CheckpointError

N = 2  # updates per half run
SEEDS = 2


@pytest.fixture(scope="module")
def tiny():
    """A tiny PPO agent (4 envs x 8 steps, 2 epochs x 2 minibatches, annealed lr), compiled once."""
    cfg = ppo.PPOConfig(
        env="CartPole-v1",
        total_timesteps=4 * 8 * 2 * N,
        num_envs=4,
        num_steps=8,
        update_epochs=2,
        num_minibatches=2,
        hidden_sizes=(16, 16),
        anneal_lr=True,
        learning_rate=1e-3,
    )
    agent = ppo.make_agent(cfg)
    keys = jax.random.split(jax.random.key(0), SEEDS)
    init = jax.jit(jax.vmap(agent.init))(keys)
    run_half = jax.jit(jax.vmap(lambda s: agent.run(s, N)))
    run_full = jax.jit(jax.vmap(lambda s: agent.run(s, 2 * N)))
    half = run_half(init)
    return dataclasses.make_dataclass(
        "Tiny", ["cfg", "agent", "init", "run_half", "run_full", "half"]
    )(cfg, agent, init, run_half, run_full, half)


@pytest.fixture()
def saved(tiny, tmp_path):
    """A checkpoint of the half-way state, in a fresh folder per test."""
    directory = tmp_path / "checkpoint"
    checkpoint.save(directory, tiny.half.state, tiny.cfg, {"seed": 0})
    return directory


def tree_equal(a, b) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def test_save_load_round_trip_is_exact(tiny, saved):
    state, info = checkpoint.load(saved, tiny.agent, num_seeds=SEEDS)
    assert tree_equal(state, tiny.half.state)
    assert info["algo"] == "ppo"
    assert info["num_seeds"] == SEEDS
    assert info["update_step"] == N
    assert info["config"]["hidden_sizes"] == [16, 16]
    assert info["extra"] == {"seed": 0}
    assert set(info["versions"]) >= {"jax", "flax", "orbax"}
    # A config (not an agent) works too and builds its own abstract target.
    state2, _ = checkpoint.load(saved, tiny.cfg)
    assert tree_equal(state2, tiny.half.state)


def test_resumed_run_equals_the_uninterrupted_run(tiny, saved):
    full = tiny.run_full(tiny.init)
    restored, _ = checkpoint.load(saved, tiny.agent, num_seeds=SEEDS)
    rest = tiny.run_half(restored)
    assert tree_equal(rest.state.params, full.state.params)
    assert tree_equal(rest.state, full.state)
    joined = jax.tree.map(
        lambda a, b: jnp.concatenate([a, b], axis=1), tiny.half.metrics, rest.metrics
    )
    assert tree_equal(joined, full.metrics)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hidden_sizes": (32, 32)}, "hidden_sizes"),
        ({"num_envs": 8, "num_minibatches": 2}, "num_envs"),
        ({"env": "Acrobot-v1"}, "env"),
        ({"policy": "categorical", "layer_norm": True}, "layer_norm"),
    ],
)
def test_loading_with_another_config_shape_names_the_field(tiny, saved, change, field):
    other = dataclasses.replace(tiny.cfg, **change)
    with pytest.raises(CheckpointError, match=field) as err:
        checkpoint.load(saved, other)
    assert isinstance(err.value, ValueError)


def test_relative_paths_work(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint.save("ckpt", tiny.half.state, tiny.cfg)
    state, _ = checkpoint.load("ckpt", tiny.agent)
    assert tree_equal(state, tiny.half.state)


def test_total_timesteps_and_leaf_fields_may_change(tiny, saved):
    longer = dataclasses.replace(tiny.cfg, total_timesteps=tiny.cfg.total_timesteps * 2)
    state, _ = checkpoint.load(saved, dataclasses.replace(longer, learning_rate=3e-4))
    assert tree_equal(state, tiny.half.state)


def test_wrong_algo_or_seed_count_is_refused(tiny, saved):
    from purejaxrl import a2c

    with pytest.raises(CheckpointError, match="algo"):
        checkpoint.load(saved, a2c.A2CConfig(env="CartPole-v1", num_envs=4, num_steps=8))
    with pytest.raises(CheckpointError, match="num_seeds"):
        checkpoint.load(saved, tiny.agent, num_seeds=SEEDS + 1)


def test_missing_or_empty_directory_raises(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope", tiny.cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no finished checkpoint"):
        checkpoint.load(tmp_path / "empty", tiny.cfg)


def _step_dir(directory: Path) -> Path:
    return directory / str(checkpoint.latest_step(directory))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, min(len(data), len(data) // 3 + 16)):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "target, damage",
    [
        ("state/d", _truncate),  # the array data
        ("state/d", _garble),
        ("state/_METADATA", _truncate),
        ("info/metadata", _garble),
        ("info/metadata", Path.unlink),
    ],
)
def test_corrupt_checkpoint_raises(tiny, saved, target, damage):
    path = _step_dir(saved) / target
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    assert files
    for f in files:
        damage(f)
    with pytest.raises(CheckpointError, match="corrupt|unreadable"):
        checkpoint.load(saved, tiny.agent)


def test_contents_that_fail_the_checksum_raise(tiny, saved):
    step = _step_dir(saved)
    info_file = step / "info" / "metadata"
    info = json.loads(info_file.read_text())
    info["digest"] = "0" * 64
    info_file.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="file info/metadata fails its checksum"):
        checkpoint.load(saved, tiny.agent)
    # With a manifest that agrees (files consistent, arrays not), the array digest still catches it.
    (step / checkpoint.MANIFEST).unlink()
    checkpoint.write_manifest(step, int(step.name))
    with pytest.raises(CheckpointError, match="array contents fail their checksum"):
        checkpoint.load(saved, tiny.agent)


# --------------------------------------------------------------------------- file manifest


@pytest.fixture(scope="module")
def saved_once(tiny, tmp_path_factory):
    """One checkpoint of the half-way state for the whole module; copy it before damaging it."""
    directory = tmp_path_factory.mktemp("saved_once") / "checkpoint"
    checkpoint.save(directory, tiny.half.state, tiny.cfg, {"seed": 0})
    return directory


@pytest.fixture()
def copied(saved_once, tmp_path):
    return Path(shutil.copytree(saved_once, tmp_path / "checkpoint"))


def _data_file(step: Path, index: int) -> str:
    """The index-th smallest of the ocdbt data files (array chunks and b-tree nodes)."""
    files = sorted((step / "state/ocdbt.process_0/d").iterdir(), key=lambda p: p.stat().st_size)
    return files[index].relative_to(step).as_posix()


def _edit_an_entry(path: Path):
    """Valid JSON, but one file's recorded size changed (as by a hand edit)."""
    record = json.loads(path.read_text())
    record["files"]["info/metadata"]["size"] += 1
    path.write_text(json.dumps(record))


def _flip_one_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_but_itself(saved_once):
    step = _step_dir(saved_once)
    record = json.loads((step / checkpoint.MANIFEST).read_text())
    on_disk = {
        p.relative_to(step).as_posix(): p.stat().st_size for p in step.rglob("*") if p.is_file()
    }
    assert {rel: e["size"] for rel, e in record["files"].items()} == {
        rel: size for rel, size in on_disk.items() if rel != checkpoint.MANIFEST
    }
    assert record["step"] == N and "state/ocdbt.process_0/manifest.ocdbt" in record["files"]
    assert not [p.name for p in step.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize(
    "pick, damage, message",
    [
        (lambda step: "_CHECKPOINT_METADATA", _truncate, "fails its checksum (size"),
        (
            lambda step: "state/ocdbt.process_0/manifest.ocdbt",
            _truncate,
            "fails its checksum (size",
        ),
        (lambda step: "state/manifest.ocdbt", _truncate, "fails its checksum (size"),
        (lambda step: _data_file(step, 0), _truncate, "fails its checksum (size"),
        (lambda step: _data_file(step, -1), _flip_one_byte, "same size"),
        (lambda step: "info/metadata", Path.unlink, "is missing"),
        (lambda step: checkpoint.MANIFEST, _truncate, "unreadable"),
        (lambda step: checkpoint.MANIFEST, _edit_an_entry, "own checksum"),
        (lambda step: checkpoint.MANIFEST, Path.unlink, "has no"),
    ],
    ids=[
        "truncated-checkpoint-metadata",
        "truncated-ocdbt-manifest",
        "truncated-root-ocdbt-manifest",
        "truncated-small-data-file",
        "flipped-byte-in-array-file",
        "deleted-info",
        "truncated-manifest",
        "edited-manifest",
        "deleted-manifest",
    ],
)
def test_damaged_file_fails_in_one_line_naming_it(
    tiny, copied, capfd, caplog, pick, damage, message
):
    step = _step_dir(copied)
    name = pick(step)
    damage(step / name)
    before = snapshot(copied)
    caplog.set_level(logging.INFO)
    for read in (checkpoint.read_info, lambda d: checkpoint.load(d, tiny.agent)):
        with pytest.raises(CheckpointError) as err:
            read(copied)
        text = str(err.value)
        assert "\n" not in text and name in text and message in text, text
    assert snapshot(copied) == before  # nothing rewritten, removed or added
    # Caught before orbax read anything: no absl/orbax warnings or errors.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "ERROR" not in capfd.readouterr().err


def test_files_added_after_the_save_are_ignored(tiny, copied):
    (_step_dir(copied) / "notes.txt").write_text("hello")
    (_step_dir(copied) / "state" / ".DS_Store").write_bytes(b"\0" * 10)
    state, _ = checkpoint.load(copied, tiny.agent)
    assert tree_equal(state, tiny.half.state)


def test_a_step_without_manifest_is_an_unfinished_save(tiny, saved, monkeypatch):
    later = tiny.half.state.replace(update_step=tiny.half.state.update_step + 5)

    def interrupted(step_dir, step):
        raise OSError("killed after orbax finalised the step (simulated)")

    monkeypatch.setattr(checkpoint, "write_manifest", interrupted)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(saved, later, tiny.cfg)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.iterdir()) == sorted([str(N), str(N + 5)])
    # The finalised step without manifest is skipped (with a warning); the previous one loads.
    with pytest.warns(UserWarning, match=f"without {checkpoint.MANIFEST}"):
        assert checkpoint.latest_step(saved) == N
    with pytest.warns(UserWarning):
        state, info = checkpoint.load(saved, tiny.agent)
    assert info["update_step"] == N and tree_equal(state, tiny.half.state)
    # Saving that step again replaces the unfinished folder, then drops the old step.
    checkpoint.save(saved, later, tiny.cfg)
    assert sorted(p.name for p in saved.iterdir()) == [str(N + 5)]
    assert checkpoint.latest_step(saved) == N + 5


def test_failed_save_keeps_the_previous_checkpoint(tiny, saved, monkeypatch):
    original = ocp.StandardCheckpointHandler.async_save

    async def fail_after_writing(self, *args, **kwargs):
        await original(self, *args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", fail_after_writing)
    later = tiny.half.state.replace(update_step=tiny.half.state.update_step + 5)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(saved, later, tiny.cfg)
    monkeypatch.undo()
    # The half-written step is not a checkpoint; the previous one loads intact.
    assert checkpoint.latest_step(saved) == N
    state, info = checkpoint.load(saved, tiny.agent)
    assert info["update_step"] == N and tree_equal(state, tiny.half.state)
    # The next save succeeds, replaces the old step and cleans the leftover.
    checkpoint.save(saved, later, tiny.cfg)
    assert sorted(p.name for p in saved.iterdir()) == [str(N + 5)]


def test_saving_an_existing_or_earlier_step_is_refused(tiny, saved):
    before = snapshot(saved)
    with pytest.raises(CheckpointError, match="already holds a checkpoint at update"):
        checkpoint.save(saved, tiny.half.state, tiny.cfg)
    earlier = tiny.half.state.replace(update_step=tiny.half.state.update_step - 1)
    with pytest.raises(CheckpointError, match="already holds a later checkpoint"):
        checkpoint.save(saved, earlier, tiny.cfg)
    assert snapshot(saved) == before


# --------------------------------------------------------------------------- failed resumes


@pytest.fixture()
def run_dir(tiny, tmp_path):
    """A run folder as experiments.train leaves it after N updates (built without training)."""
    d = tmp_path / "run"
    d.mkdir()
    spec = runs.RunSpec(algo="ppo", seed=0, num_seeds=SEEDS, config=tiny.cfg)
    runs.write_config(d, spec)
    runs.append_metrics(d, jax.device_get(tiny.half.metrics), first_update=0)
    command.write_json(d / "summary.json", {"final_return_mean": 1.0})
    checkpoint.save(d / "checkpoint", tiny.half.state, tiny.cfg)
    return d


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(directory)) + "/": None for p in directory.rglob("*") if p.is_dir()}


def _corrupt(d: Path):
    for f in (_step_dir(d / "checkpoint") / "state" / "d").iterdir():
        _truncate(f)


def _remove(d: Path):
    shutil.rmtree(d / "checkpoint")


@pytest.mark.parametrize(
    "prepare, overrides, message",
    [
        (None, ["hidden_sizes=[32,32]"], "hidden_sizes"),
        (None, ["num_envs=8"], "num_envs"),
        (None, ["num_seeds=3"], "num_seeds"),
        (_corrupt, [], "corrupt"),
        (_remove, [], "does not exist"),
    ],
)
def test_failed_resume_leaves_the_run_folder_untouched(
    run_dir, capsys, prepare, overrides, message
):
    if prepare is not None:
        prepare(run_dir)
    before = snapshot(run_dir)
    code = train.main(["--resume", str(run_dir), "total_timesteps=1024", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert snapshot(run_dir) == before
