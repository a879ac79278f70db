"""purejaxrl.scores: the final return from finished episodes only, against hand cases."""

import jax
import jax.numpy as jnp
import numpy as np

from purejaxrl import scores

# 8 updates: the placeholder 0 until the first finished episode at update 2, carried after
RETURNS = np.array([0.0, 0.0, 3.0, 3.0, 5.0, 5.0, 5.0, 7.0])
FINISHED = np.array([0, 0, 1, 0, 1, 0, 0, 2])


def test_measured_returns_hide_the_placeholder_before_the_first_episode():
    got = np.asarray(scores.measured_returns(RETURNS, FINISHED))
    assert np.isnan(got[:2]).all()
    np.testing.assert_array_equal(got[2:], RETURNS[2:])


def test_final_return_is_the_mean_of_the_last_5_percent_of_updates():
    # 8 updates: window ceil(0.4) = 1 -> the last update
    assert float(scores.final_return(RETURNS, FINISHED)) == 7.0
    # a 40% window: ceil(3.2) = 4 updates 4..7 -> (5 + 5 + 5 + 7) / 4
    assert float(scores.final_return(RETURNS, FINISHED, fraction=0.4)) == 5.5
    # 100 updates, all measured: the last 5
    r = np.arange(100.0)
    assert float(scores.final_return(r, np.ones(100))) == np.mean(np.arange(95, 100))


def test_updates_before_the_first_episode_are_left_out_and_none_is_nan():
    # a window of 4 over updates 0..3 (lifetime 4): only updates 2, 3 are measured
    assert float(scores.final_return(RETURNS, FINISHED, fraction=1.0, lifetime=4)) == 3.0
    # lifetime 2: updates 0..1 have no finished episode -> NaN, never 0
    assert np.isnan(float(scores.final_return(RETURNS, FINISHED, lifetime=2)))
    assert np.isnan(float(scores.final_return(np.zeros(10), np.zeros(10))))


def test_a_lifetime_scores_each_run_at_its_own_update():
    """Runs `[3, U]` with lifetimes `[3]` (traced-friendly arrays): lifetime 40 -> window 2
    (updates 38, 39); lifetime 10 -> update 9; lifetimes beyond U are clipped to U."""
    r = np.tile(np.arange(100.0), (3, 1))
    got = scores.final_return(r, np.ones_like(r), lifetime=jnp.array([40, 10, 500]))
    np.testing.assert_allclose(np.asarray(got), [38.5, 9.0, 97.0])


def test_host_numbers_keep_float64_and_jax_arrays_agree_to_float32():
    """numpy in, numpy float64 out (summaries read 213.6, not 213.60000610351562); the same
    numbers as jax arrays (inside a jitted program) agree to float32 rounding."""
    r = np.array([0.0, 213.6, 213.6, 1.1])
    f = np.array([0, 1, 0, 1])
    host = scores.final_return(r, f, fraction=1.0)
    assert isinstance(host, np.ndarray) and host.dtype == np.float64
    assert float(host) == np.mean([213.6, 213.6, 1.1])
    device = jax.jit(scores.final_return, static_argnames="fraction")(
        jnp.asarray(r), jnp.asarray(f), fraction=1.0
    )
    assert device.dtype == jnp.float32
    np.testing.assert_allclose(float(device), float(host), rtol=1e-6)
