"""The ES driver (meta/es.py): learning, per-candidate evaluation, keys, sharding, checkpoints,
config errors and non-finite fitness."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta import es
from tests.helpers import run_with_host_devices

DIM, OPTIMUM = 10, 3.0
INIT = {"w": jnp.zeros(DIM)}


def quadratic(params, key):
    """-||w - 3||^2: maximum 0 at w = 3; the key is unused."""
    return -jnp.sum((params["w"] - OPTIMUM) ** 2)


def noisy(params, key):
    """The quadratic plus key noise (so candidate keys matter)."""
    return quadratic(params, key) + jax.random.normal(key)


# --------------------------------------------------------------------------- learning

SETTINGS = {
    "open_es": dict(population_size=32, sigma=0.5, learning_rate=0.1),
    "snes": dict(population_size=16, sigma=1.0),
    "cma_es": dict(population_size=16, sigma=1.0),
    "pgpe": dict(population_size=32, sigma=0.5, learning_rate=0.15),
}


@pytest.mark.parametrize("strategy", es.STRATEGIES)
def test_every_strategy_climbs_a_quadratic(strategy):
    cfg = es.ESConfig(
        strategy=strategy, num_generations=80, generations_per_call=80, **SETTINGS[strategy]
    )
    out = es.evolve(quadratic, INIT, cfg, jax.random.key(0), progress=False)
    assert out.fitness.shape == (80, cfg.population_size)
    start, end = out.mean_fitness[0], out.mean_fitness[-5:].mean()
    assert start < -60 and end > -5, (start, end)  # from ~-90 to near the optimum 0
    np.testing.assert_allclose(out.mean_params["w"], OPTIMUM, atol=0.5)
    assert out.best_fitness == pytest.approx(np.max(out.fitness))
    np.testing.assert_allclose(quadratic(out.best_params, None), out.best_fitness, rtol=1e-5)
    assert out.compile_s > 0 and out.run_s > 0 and out.num_nonfinite == 0


# --------------------------------------------------------------------------- candidates, keys


@pytest.mark.parametrize("strategy", ["open_es", "snes"])
def test_vmapped_population_equals_candidates_one_by_one_and_antithetic_pairs_share_keys(
    strategy,
):
    seen = []

    def recording(params, key):
        jax.debug.callback(lambda w, k: seen.append((np.asarray(w), np.asarray(k))),
                           params["w"], jax.random.key_data(key))  # fmt: skip
        return jnp.sum(jnp.sin(params["w"])) + jax.random.normal(key)

    init = {"w": jnp.linspace(-1.0, 1.0, DIM)}
    cfg = es.ESConfig(strategy=strategy, population_size=8, sigma=0.3, num_generations=1)
    out = es.evolve(recording, init, cfg, jax.random.key(3), progress=False)
    P = cfg.population_size
    records = list(seen)  # evaluating alone below records again
    assert len(records) == P
    # Each recorded candidate, evaluated alone, gives the fitness of exactly one population slot.
    slot = {}
    for w, k in records:
        alone = float(recording({"w": jnp.asarray(w)}, jax.random.wrap_key_data(k)))
        j = int(np.argmin(np.abs(out.fitness[0] - alone)))
        np.testing.assert_allclose(out.fitness[0, j], alone, rtol=1e-6, atol=1e-6)
        slot[j] = (w, k)
    assert sorted(slot) == list(range(P))
    keys = np.stack([slot[j][1] for j in range(P)])
    if cfg.antithetic:  # evosax 0.3: candidates i and i + P/2 are mean +- std * z_i
        for i in range(P // 2):
            np.testing.assert_array_equal(keys[i], keys[i + P // 2])
            np.testing.assert_allclose(slot[i][0] + slot[i + P // 2][0], 2 * init["w"], atol=1e-5)
        assert len({k.tobytes() for k in keys}) == P // 2
    else:
        assert len({k.tobytes() for k in keys}) == P


def test_candidate_keys_layout():
    key = jax.random.key(0)
    anti = jax.random.key_data(es.candidate_keys(key, 6, antithetic=True))
    np.testing.assert_array_equal(anti[:3], anti[3:])
    plain = jax.random.key_data(es.candidate_keys(key, 6, antithetic=False))
    assert len({tuple(k) for k in np.asarray(plain)}) == 6


# --------------------------------------------------------------------------- devices

CHILD = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp
    from meta import es
    from tests.test_es import INIT, noisy
    assert jax.device_count() == 4, jax.devices()
    cfg = es.ESConfig(population_size=8, sigma=0.5, learning_rate=0.1, num_generations=6,
                      generations_per_call=3)
    four = es.evolve(noisy, INIT, cfg, jax.random.key(1), progress=False)
    one = es.evolve(noisy, INIT, cfg, jax.random.key(1), devices=1, progress=False)
    try:
        es.evolve(noisy, INIT, es.ESConfig(population_size=6), jax.random.key(1), progress=False)
        error = ""
    except ValueError as e:
        error = str(e)
    print(json.dumps({
        "four": four.fitness.tolist(), "one": one.fitness.tolist(),
        "mean": [four.mean_params["w"].tolist(), one.mean_params["w"].tolist()],
        "error": error,
    }))
    """
)


def test_population_sharded_over_four_devices_equals_one_device():
    got = run_with_host_devices(CHILD, 4, timeout=300)
    four, one = np.asarray(got["four"]), np.asarray(got["one"])
    assert four.shape == one.shape == (6, 8)
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(*got["mean"], rtol=1e-5, atol=1e-5)
    assert "population_size=6 must divide by the 4 devices" in got["error"]


# --------------------------------------------------------------------------- checkpoints


class Interrupted(Exception):
    """Raised from on_generations to stop evolve between chunks, as a Ctrl-C would."""


def _assert_bit_equal(a: es.ESOutput, b: es.ESOutput) -> None:
    np.testing.assert_array_equal(a.fitness, b.fitness)
    np.testing.assert_array_equal(a.nonfinite, b.nonfinite)
    assert a.best_fitness == b.best_fitness
    for x, y in zip(
        jax.tree.leaves((a.mean_params, a.best_params, a.state)),
        jax.tree.leaves((b.mean_params, b.best_params, b.state)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("strategy", ["open_es", "cma_es"])
def test_resume_after_an_interruption_equals_an_uninterrupted_run_bit_for_bit(strategy, tmp_path):
    cfg = es.ESConfig(strategy=strategy, population_size=8, sigma=0.5, num_generations=8,
                      generations_per_call=2)  # fmt: skip
    key = jax.random.key(7)
    whole = es.evolve(noisy, INIT, cfg, key, progress=False)

    def stop_at_four(generation, metrics):
        assert metrics["fitness"].shape == (2, 8) and "mean_params" in metrics
        if generation == 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        es.evolve(noisy, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path,
                  on_generations=stop_at_four)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4"]  # only the newest step is kept
    resumed = es.evolve(noisy, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path, resume=True)
    _assert_bit_equal(whole, resumed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["8"]
    # A finished run resumes to the same output without running anything.
    again = es.evolve(noisy, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path, resume=True)
    _assert_bit_equal(whole, again)
    assert again.compile_s == 0 and again.run_s == 0


def test_resume_refuses_another_config_key_or_parameter_shape(tmp_path):
    cfg = es.ESConfig(population_size=4, sigma=0.5, num_generations=2, generations_per_call=2)
    key = jax.random.key(0)
    es.evolve(quadratic, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="resume=True"):
        es.evolve(quadratic, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path)
    other = es.ESConfig(population_size=4, sigma=0.6, num_generations=2, generations_per_call=2)
    with pytest.raises(ValueError, match=r"sigma: checkpoint 0\.5 vs config 0\.6"):
        es.evolve(quadratic, INIT, other, key, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="another key"):
        es.evolve(quadratic, INIT, cfg, jax.random.key(1), progress=False,
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="other shapes"):
        es.evolve(quadratic, {"w": jnp.zeros(DIM + 1)}, cfg, key, progress=False,
                  checkpoint_dir=tmp_path, resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="past ESConfig.num_generations=1"):
        fewer = es.ESConfig(population_size=4, sigma=0.5, num_generations=1)
        es.evolve(quadratic, INIT, fewer, key, progress=False, checkpoint_dir=tmp_path, resume=True)
    # A damaged file is named before orbax reads anything (the largest data file: the manifest,
    # sometimes the largest, has its own "unreadable" error).
    data_files = [
        p for p in (tmp_path / "2").rglob("*") if p.is_file() and "MANIFEST" not in p.name
    ]
    victim = max(data_files, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    with pytest.raises(ValueError, match="corrupt checkpoint.*fails its checksum"):
        es.evolve(quadratic, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path, resume=True)
    # resume=True with no checkpoint yet starts afresh.
    fresh = es.evolve(quadratic, INIT, cfg, key, progress=False, checkpoint_dir=tmp_path / "new",
                      resume=True)  # fmt: skip
    assert fresh.fitness.shape == (2, 4) and (tmp_path / "new" / "2").is_dir()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(population_size=7), "population_size=7 must be even"),
        (dict(strategy="pgpe", population_size=5), "population_size=5 must be even"),
        (dict(strategy="open-es"), "did you mean 'open_es'"),
        (dict(strategy="cmaes"), "did you mean 'cma_es'"),
        (dict(sigma=0.0), "sigma=0.0: must lie in"),
        (dict(sigma=-1.0), "sigma=-1.0: must lie in"),
        (dict(learning_rate=0.0), "learning_rate=0.0: must lie in"),
        (dict(strategy="snes", learning_rate=-0.1), "learning_rate=-0.1: must lie in"),
        (dict(strategy="cma_es", learning_rate=0.1), "learning_rate=0.1: cma_es sets"),
        (dict(strategy="snes", antithetic=True), "antithetic=True: not supported"),
        (dict(strategy="pgpe", antithetic=False), "antithetic=False: pgpe always"),
        (dict(fitness_shaping="rank"), "fitness_shaping='rank' is unknown"),
        (dict(strategy="cma_es", fitness_shaping="z_score"), "fitness_shaping='z_score'"),
        (dict(strategy="snes", sigma_decay=0.99), "sigma_decay=0.99: only open_es"),
        (dict(population_size=0), "population_size=0: must be a positive integer"),
        (dict(generations_per_call=0), "generations_per_call=0"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
    ],
)
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        es.ESConfig(**kwargs)


def test_config_defaults_are_filled_in_per_strategy():
    assert es.ESConfig() == es.ESConfig(learning_rate=0.03, antithetic=True,
                                        fitness_shaping="centered_rank")  # fmt: skip
    snes = es.ESConfig(strategy="snes", population_size=5)
    assert (snes.learning_rate, snes.antithetic, snes.fitness_shaping) == (
        1.0,
        False,
        "rank_weights",
    )
    assert es.ESConfig(strategy="cma_es").learning_rate is None


def test_fitness_fn_must_return_a_scalar():
    with pytest.raises(ValueError, match="must return a scalar"):
        es.evolve(lambda p, k: p["w"], INIT, es.ESConfig(), jax.random.key(0), progress=False)


# --------------------------------------------------------------------------- non-finite fitness


def test_nonfinite_fitness_takes_the_worst_finite_value_of_its_generation():
    fitness = jnp.asarray([1.0, jnp.nan, 3.0, jnp.inf, -jnp.inf, 2.0])
    clean, bad = es.replace_nonfinite(fitness)
    np.testing.assert_array_equal(clean, [1.0, 1.0, 3.0, 1.0, 1.0, 2.0])
    assert int(bad) == 3
    clean, bad = es.replace_nonfinite(jnp.full(4, jnp.nan))
    np.testing.assert_array_equal(clean, np.zeros(4))
    assert int(bad) == 4


def test_nonfinite_candidates_rank_last_are_counted_and_do_not_poison_the_state():
    def flaky(params, key):
        u = jax.random.uniform(key)
        value = quadratic(params, key)
        return jnp.where(u < 0.2, jnp.nan, jnp.where(u < 0.3, jnp.inf, value))

    cfg = es.ESConfig(population_size=32, sigma=0.5, learning_rate=0.1, fitness_shaping="z_score",
                      num_generations=60, generations_per_call=60)  # fmt: skip
    out = es.evolve(flaky, INIT, cfg, jax.random.key(0), progress=False)
    bad = ~np.isfinite(out.fitness)
    np.testing.assert_array_equal(out.nonfinite, bad.sum(1))
    assert out.num_nonfinite > 0.15 * out.fitness.size
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out.state))
    np.testing.assert_allclose(out.mean_params["w"], OPTIMUM, atol=0.5)
    assert np.isfinite(out.best_fitness)  # +inf never becomes the best
    assert out.best_fitness == np.max(np.where(bad, -np.inf, out.fitness))
    assert np.all(np.isfinite(out.mean_fitness))


def test_a_generation_without_finite_fitness_leaves_the_state_unchanged():
    cfg = es.ESConfig(population_size=4, sigma=0.5, num_generations=2, generations_per_call=2)
    out = es.evolve(lambda p, k: jnp.nan, INIT, cfg, jax.random.key(0), progress=False)
    np.testing.assert_array_equal(out.nonfinite, [4, 4])
    np.testing.assert_array_equal(out.mean_params["w"], INIT["w"])
    np.testing.assert_array_equal(out.best_params["w"], INIT["w"])
    assert out.best_fitness == -np.inf and np.all(np.isnan(out.mean_fitness))


# ------------------------------------------------------------------- best under a curriculum


class Harder:
    """A curriculum whose generation g proposes task g for every pair: later tasks are harder
    (the fitness subtracts 100 g), so fitness is comparable only within a generation."""

    metrics = ("task",)

    def init(self, key):
        return jnp.zeros((), jnp.int32)

    def propose(self, state, key, num, shard):
        return state + 1, jnp.full((num,), state, jnp.float32), ()

    def update(self, state, tasks, info, fitness):
        return state, {"task": tasks[0]}


def harder_fitness(params, key, task):
    return quadratic(params, key) - 100.0 * task


def test_with_a_curriculum_best_is_the_best_candidate_of_the_latest_generation():
    cfg = es.ESConfig(population_size=8, sigma=0.5, learning_rate=0.1, num_generations=4,
                      generations_per_call=2)  # fmt: skip
    out = es.evolve(harder_fitness, INIT, cfg, jax.random.key(0), progress=False,
                    curriculum=Harder())  # fmt: skip
    np.testing.assert_array_equal(out.curriculum["task"], [0, 1, 2, 3])
    # generation 0 (the easiest task) holds the maximum over generations; best is generation 3's
    assert np.argmax(np.max(out.fitness, axis=1)) == 0
    assert out.best_fitness == np.max(out.fitness[-1])
    np.testing.assert_allclose(harder_fitness(out.best_params, None, 3.0), out.best_fitness,
                               rtol=1e-6)  # fmt: skip


def test_with_a_curriculum_a_generation_without_finite_fitness_keeps_the_previous_best():
    def fitness(params, key, task):  # the last generation (task 2) has no finite fitness
        return jnp.where(task == 2, jnp.nan, harder_fitness(params, key, task))

    cfg = es.ESConfig(population_size=4, sigma=0.5, num_generations=3, generations_per_call=3)
    out = es.evolve(fitness, INIT, cfg, jax.random.key(1), progress=False, curriculum=Harder())
    np.testing.assert_array_equal(out.nonfinite, [0, 0, 4])
    assert out.best_fitness == np.max(out.fitness[1])
    np.testing.assert_allclose(harder_fitness(out.best_params, None, 1.0), out.best_fitness,
                               rtol=1e-6)  # fmt: skip


def test_without_a_curriculum_best_is_over_all_generations():
    def lucky(params, key):  # one task distribution; the noise puts the maximum anywhere
        return quadratic(params, key) + 100.0 * jax.random.normal(key)

    cfg = es.ESConfig(population_size=8, sigma=0.5, learning_rate=0.1, num_generations=4,
                      generations_per_call=2)  # fmt: skip
    out = es.evolve(lucky, INIT, cfg, jax.random.key(0), progress=False)
    assert np.argmax(np.max(out.fitness, axis=1)) < 3  # not the last generation's
    assert out.best_fitness == np.max(out.fitness)
