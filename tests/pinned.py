"""Pinned results: tiny runs of every agent whose metrics are stored in tests/data/pinned.npz.

The file was written by the commit before the loop refactor (issue 11) with

    .venv/bin/python -m tests.pinned --write

and tests/test_pinned.py checks that today's code reproduces it. Each case is built through the
public `make_train(cfg)` of its algorithm and run unbatched under `jax.jit` with key 0.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np

from purejaxrl import a2c, ppo, sac
from tests import tiny

PATH = Path(__file__).parent / "data" / "pinned.npz"

_PPO = tiny.ppo_config(5, anneal_lr=True)
_PEND = dataclasses.replace(
    _PPO, env="Pendulum-v1", normalize_obs=True, normalize_reward=True, clip_value_loss=True
)
_SAC = tiny.sac_config(48)

CASES = {
    "ppo_cartpole": (ppo, _PPO),
    "ppo_pendulum": (ppo, _PEND),
    "a2c_cartpole": (
        a2c,
        a2c.A2CConfig(
            env="CartPole-v1", total_timesteps=4 * 8 * 6, num_envs=4, hidden_sizes=(16, 16)
        ),
    ),
    "pmoe_ppo_pmoe": (ppo, dataclasses.replace(_PEND, policy="pmoe", num_experts=2)),
    "pmoe_ppo_gumbel": (
        ppo,
        dataclasses.replace(
            _PEND, policy="pmoe", num_experts=2, mixture_grad="gumbel", ent_coef=0.01
        ),
    ),
    "pmoe_ppo_score": (
        ppo,
        dataclasses.replace(_PEND, policy="pmoe", num_experts=3, mixture_grad="score"),
    ),
    "sac": (sac, _SAC),
    "pmoe_sac_pmoe": (sac, dataclasses.replace(_SAC, policy="pmoe", num_experts=2)),
    "pmoe_sac_gumbel": (
        sac,
        dataclasses.replace(_SAC, policy="pmoe", num_experts=2, mixture_grad="gumbel"),
    ),
    "pmoe_sac_score": (
        sac,
        dataclasses.replace(_SAC, policy="pmoe", num_experts=2, mixture_grad="score"),
    ),
}


# Not pinned: the size of each `param_sum/<i>`'s terms, the scale of its float rounding.
SCALE = "param_abs_sum/"


def run_case(name: str) -> dict[str, np.ndarray]:
    """Metrics `[num_updates]` of one case, plus `param_sum/<i>`: per-leaf sums of final params,
    and `param_abs_sum/<i>` (`SCALE`, not pinned): per-leaf sums of their absolute values."""
    module, cfg = CASES[name]
    out = jax.jit(module.make_train(cfg))(jax.random.key(0))
    result = {k: np.asarray(v) for k, v in out.metrics.items()}
    leaves = [np.asarray(x) for x in jax.tree.leaves(out.state.params)]
    result.update({f"param_sum/{i}": x.sum() for i, x in enumerate(leaves)})
    result.update({f"{SCALE}{i}": np.abs(x).sum() for i, x in enumerate(leaves)})
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--write", action="store_true", help=f"overwrite {PATH}")
    args = p.parse_args()
    flat = {f"{c}:{k}": v for c in CASES for k, v in run_case(c).items() if not k.startswith(SCALE)}
    if args.write:
        np.savez_compressed(PATH, **flat)
        print(f"wrote {len(flat)} arrays to {PATH}")


if __name__ == "__main__":
    main()
