"""Logging sinks (purejaxrl/sinks.py) and `experiments.train --log tensorboard wandb`."""

from __future__ import annotations

import csv
import glob
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import train
from purejaxrl import sinks

STEPS_PER_UPDATE = 2 * 64  # num_envs * num_steps
# Pendulum's episodes last 200 steps and each env steps 64 times an update: the first episodes
# end in update 4, so updates 1-3 have no return.
PENDULUM = {
    "algo": "ppo",
    "seed": 1,
    "num_seeds": 2,
    "env": "Pendulum-v1",
    "total_timesteps": 6 * STEPS_PER_UPDATE,
    "num_envs": 2,
    "num_steps": 64,
    "update_epochs": 1,
    "num_minibatches": 2,
    "hidden_sizes": [16, 16],
}
FIRST_EPISODE_UPDATE = 4


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch, tmp_path_factory):
    for key, value in wandb_env(tmp_path_factory).items():
        monkeypatch.setenv(key, value)


def wandb_env(tmp_path_factory) -> dict[str, str]:
    """W&B offline and quiet, its settings and caches out of the home folder."""
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    return {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> Path:
    """6 updates of 2 seeds in segments of 3, bar off, logged to TensorBoard and W&B."""
    config = tmp_path_factory.mktemp("configs") / "pendulum.yaml"
    config.write_text(yaml.safe_dump(PENDULUM))
    out = tmp_path_factory.mktemp("runs") / "logged"
    args = ["--config", str(config), "--out", str(out), "--checkpoint-every", "3"]
    args += ["--no-progress", "--log", "tensorboard", "wandb", "--wandb-project", "sinks-test"]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in wandb_env(tmp_path_factory).items():
            mp.setenv(key, value)
        assert train.main(args) == 0
    return out


# --------------------------------------------------------------------------- readers


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in log_dir (TFRecord framing: length u64, its
    crc u32, an Event proto, its crc u32), later files overriding earlier ones."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (LevelDB-log framing: a 7-byte header, then 32 KiB
    blocks of chunks: crc u32, length u16, type u8 (1 full, 2 first, 3 middle, 4 last))."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunks, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return records


def wandb_history(records) -> list[dict]:
    """The logged rows of a W&B run's records: {name: value}."""
    return [
        {
            item.key or ".".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- train --log


# The `logged` fixture is a whole `experiments.train --log tensorboard wandb` run (~12 s CPU, and a
# W&B service process): with the slow checks. The reporter and the sinks are checked without training below,
# and a CLI run's TensorBoard log in test_sweep_cli.py.
@pytest.mark.slow
def test_tensorboard_logs_the_metrics_csv_values(logged):
    rows = read_csv(logged / "metrics.csv")
    assert [int(r["update"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    first = next(i for i, r in enumerate(rows) if r["episode_return_mean"])
    assert first + 1 == FIRST_EPISODE_UPDATE
    scalars = tensorboard_scalars(logged / "tb")
    steps = [int(r["env_steps"]) for r in rows]
    # Every update is reported (progress_every = 1 for 6 updates), at env steps per seed.
    assert sorted(scalars["train/update"]) == steps
    assert [scalars["train/update"][s] for s in steps] == [1, 2, 3, 4, 5, 6]
    # episode_return: none before the first finished episode, then the metrics.csv mean.
    returns = scalars["train/episode_return"]
    assert sorted(returns) == steps[first:]
    for r in rows[first:]:
        assert returns[int(r["env_steps"])] == pytest.approx(float(r["episode_return_mean"]), 1e-4)
        assert scalars["train/episode_length"][int(r["env_steps"])] == pytest.approx(
            float(r["episode_length"]), 1e-4
        )
    for name in ("loss", "entropy", "episodes_finished"):
        logged_values = scalars[f"train/{name}"]
        assert sorted(logged_values) == steps
        for r in rows:
            assert logged_values[int(r["env_steps"])] == pytest.approx(
                float(r[name]), rel=1e-4, abs=1e-6
            )
    assert "train/env_steps" not in scalars  # it is the step axis


@pytest.mark.slow  # the `logged` fixture
def test_wandb_writes_an_offline_run_with_the_config(logged):
    folders = sorted((logged / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    (path,) = folders[0].glob("run-*.wandb")
    records = wandb_records(path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "sinks-test" and run.display_name == "logged"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["algo"] == "ppo" and config["env"] == "Pendulum-v1"
    assert config["num_seeds"] == 2 and config["hidden_sizes"] == [16, 16]
    assert config["run_dir"] == str(logged)
    history = wandb_history(records)
    rows = read_csv(logged / "metrics.csv")
    assert [h["env_steps"] for h in history] == [int(r["env_steps"]) for r in rows]
    for h, r in zip(history, rows, strict=True):
        if r["episode_return_mean"]:
            assert h["train/episode_return"] == pytest.approx(
                float(r["episode_return_mean"]), rel=1e-4
            )
        else:
            assert "train/episode_return" not in h
        assert h["train/loss"] == pytest.approx(float(r["loss"]), rel=1e-4, abs=1e-6)


def test_unknown_or_missing_sink_is_an_error_before_training(tmp_path, capsys, monkeypatch):
    config = tmp_path / "pendulum.yaml"
    config.write_text(yaml.safe_dump(PENDULUM))
    out = tmp_path / "run"
    base = ["--config", str(config), "--out", str(out), "--no-progress"]
    assert train.main([*base, "--log", "tensorboard", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log mlflow: unknown logging sink; choose from")
    assert "'tensorboard', 'wandb'" in err
    assert not out.exists()
    assert train.main([*base, "--wandb-project", "p"]) == 2
    assert "--wandb-project is for --log wandb" in capsys.readouterr().err
    monkeypatch.setitem(sinks.SINKS, "wandb", ("no_such_module_for_wandb", "wandb"))
    assert train.main([*base, "--log", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "--log wandb needs the wandb package" in err
    assert "pip install 'purejaxrl-research[log]'" in err
    assert not out.exists()
    monkeypatch.setitem(sinks.SINKS, "wandb", ("wandb", "wandb"))
    monkeypatch.setattr("wandb.init", lambda **kw: 1 / 0)  # a sink that fails to start: exit 2
    assert train.main([*base, "--log", "wandb"]) == 2
    assert "error: --log wandb: wandb.init failed (ZeroDivisionError" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()


def test_log_takes_names_and_leaves_overrides():
    args = train.parse_args(["--log", "tensorboard,wandb", "lr=1", "--config", "c.yaml"])
    assert args.log == ["tensorboard,wandb"] and args.overrides == ["lr=1"]
    assert sinks.check_sinks(args.log + ["TensorBoard"]) == ["tensorboard", "wandb"]
    assert train.parse_args(["--config", "c.yaml"]).log == []


# --------------------------------------------------------------------------- Reporter


class ListSink:
    name = "list"

    def __init__(self):
        self.logs = []
        self.closed = False

    def log(self, step, scalars, prefix=None):
        self.logs.append((step, {sinks.tag(k, prefix): v for k, v in scalars.items()}))

    def close(self):
        self.closed = True


def reports():
    """Three reports of 2 seeds: seed 0 finishes its first episode at update 2, seed 1 at 3
    (between the reports: only its carried return shows it)."""
    returns = [[0.0, 0.0], [-5.0, 0.0], [-6.0, -8.0]]
    finished = [[0, 0], [1, 0], [0, 0]]
    for k in range(3):
        yield (
            np.array([k + 1, k + 1]),
            {
                "episode_return": np.array(returns[k]),
                "episode_length": np.array([10.0, 20.0]),
                "episodes_finished": np.array(finished[k]),
                "env_steps": np.array([8 * (k + 1)] * 2),
                "loss": np.array([1.0, 3.0]),
            },
        )


def test_reporter_logs_returns_only_of_seeds_that_finished_an_episode():
    batched, unrolled = ListSink(), ListSink()
    by_batch = sinks.Reporter([batched])
    by_seed = sinks.Reporter([unrolled], num_seeds=2)
    for update_step, metrics in reports():
        by_batch(update_step, metrics)
        for i in range(2):  # a callback under vmap: once per seed with unbatched values
            by_seed(update_step[i], {k: v[i] for k, v in metrics.items()})
    assert batched.logs == unrolled.logs
    steps = [step for step, _ in batched.logs]
    assert steps == [8, 16, 24]
    first, second, third = (s for _, s in batched.logs)
    assert "train/episode_return" not in first and "train/episode_length" not in first
    assert first["train/loss"] == 2.0 and first["train/update"] == 1
    assert second["train/episode_return"] == -5.0 and second["train/episode_length"] == 10.0
    assert third["train/episode_return"] == -7.0 and third["train/episode_length"] == 15.0
    assert "train/env_steps" not in third


def test_reporter_without_num_seeds_collects_until_the_next_update_and_flush():
    sink = ListSink()
    reporter = sinks.Reporter([sink], prefix="lr=0.001")
    for update_step, metrics in reports():
        for i in range(2):
            reporter(update_step[i], {k: v[i] for k, v in metrics.items()})
    assert len(sink.logs) == 2
    reporter.flush()
    assert [step for step, _ in sink.logs] == [8, 16, 24]
    assert sink.logs[-1][1]["lr=0.001/train/episode_return"] == -7.0


def test_reporter_resumed_with_started_seeds_and_a_failing_sink_is_dropped():
    class Broken(ListSink):
        def log(self, step, scalars, prefix=None):
            raise OSError("disk full")

    good, messages = ListSink(), []
    reporter = sinks.Reporter(
        [Broken(), good], num_seeds=2, started=[False, True], on_error=messages.append
    )
    update_step, metrics = next(reports())
    metrics["episode_return"] = np.array([0.0, 0.0])  # seed 1's earlier return happened to be 0
    reporter(update_step, metrics)
    reporter(update_step + 1, metrics)
    assert [s["train/episode_return"] for _, s in good.logs] == [0.0, 0.0]
    assert len(messages) == 1 and "logging to list failed (OSError: disk full)" in messages[0]


def test_close_sinks_closes_all_then_raises_or_reports_the_first_error():
    class Failing:
        def close(self):
            raise OSError("disk full")

    good, messages = ListSink(), []
    good.close = lambda: messages.append("closed")
    with pytest.raises(OSError, match="disk full"):
        sinks.close_sinks([Failing(), good])
    assert messages == ["closed"]  # tried after the failure
    sinks.close_sinks([Failing()], on_error=messages.append)
    assert messages[1] == "warning: closing the logging sinks failed: disk full"


def test_sinks_write_with_a_prefix(tmp_path):
    (tb,) = sinks.make_sinks(["tensorboard"], tmp_path, {"lr": 0.001, "sizes": (8, 8)})
    wb = sinks.WandbSink("p", tmp_path, {"lr": 0.001}, name="prefixed")
    for sink in (tb, wb):
        sink.log(16, {"train/loss": 2.0}, prefix="lr=0.001")
        sink.log(8, {"train/loss": 1.0}, prefix="lr=0.01")  # another configuration, from step 8
    sinks.close_sinks([tb, wb])
    scalars = tensorboard_scalars(tmp_path / "tb")
    # TensorBoard tags take letters, digits and _-./ only.
    assert scalars == {"lr_0.001/train/loss": {16: 2.0}, "lr_0.01/train/loss": {8: 1.0}}
    (path,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    # wandb's service may still be writing the file under load (seen once in the full suite)
    for _ in range(60):
        records = wandb_records(Path(path))
        history = wandb_history(records)
        if len(history) >= 2:
            break
        time.sleep(0.5)
    assert history[0]["lr=0.001/train/loss"] == 2.0 and history[0]["lr=0.001/env_steps"] == 16
    assert history[1]["lr=0.01/train/loss"] == 1.0 and history[1]["lr=0.01/env_steps"] == 8
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    steps = {m.name: m.step_metric for m in metrics if m.step_metric}
    assert steps["lr=0\\.001/train/loss"] == "lr=0\\.001/env_steps"
