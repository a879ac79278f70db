"""Multimodal continuous-control tasks: two equally good action modes with a valley between them.

They exist to compare mixture policies (PMOE) with unimodal Gaussian ones (SAC, PPO). Two ids:

`multimodal/bandit` (`MultimodalBandit`): `horizon` steps (default 1) in one fixed context; action
`a` in [-1, 1]^d (`action_dim`, default 1). The per-step reward (`bandit_reward`) is

    r(a) = max(open_L * bump(a; -m e_0), open_R * bump(a; +m e_0)) - valley_penalty * v(a_0)
    bump(a; c) = exp(-|a - c|^2 / (2 width^2)),   v(x) = max(0, 1 - (x / m)^2)^2

with `m = mode`. Every action axis matters (the bumps are isotropic), so a policy cannot park its
entropy in an axis the reward ignores. Defaults: m = 0.6, width = 0.1, valley_penalty = 0.5,
so r(+-m) = 1 exactly and r(0) = -0.5 (the valley; v and its slope vanish at the modes).
At reset the context is drawn: with probability `p_block` (default 0.5) one mode, left or right
with equal odds, is *blocked*: its bump pays 0, so playing it earns ~0. Observation (float32 [3]): [blocked_left, blocked_right, t / horizon]. The
context is observed, so the optimal policy always plays the open mode (either mode if none is
blocked): the optimal return is exactly 1.0 per step, `horizon` per episode, for any params
(`bandit_optimal_return`). Episodes end with `terminated` after `horizon` steps (the time is in
the observation, so this is a true terminal state; there is no bootstrapping past the last step).

`multimodal/pointmass` (`MultimodalPointMass`): a point in the arena [-1, 1]^2 starts at the
origin plus uniform jitter in [-start_noise, start_noise]^2 (default 0.02); action = velocity in
[-1, 1]^2 (clipped), `pos += step_size * action` (default 0.1), clipped to the arena. Two goal
disks of radius `goal_radius` (0.15) at (+-goal_x, 0) (goal_x = 0.8). Entering an open goal pays
`goal_reward` (1.0) and terminates. The penalty region ("wall") is the vertical band
|x| < valley_halfwidth (0.2) outside the start gate |y| < gate_halfheight (0.1): every step that
ends in it costs `valley_penalty` (0.05). `truncated` when `t >= max_steps` (40). `p_block`
(default 0.0) blocks one goal per episode as in the bandit (it pays nothing and does not end the
episode). Observation (float32 [5]): [x, y, blocked_left, blocked_right, t / max_steps].
The optimal (undiscounted) return is `goal_reward` = 1.0: the straight route to an open goal
along y = y_0 never touches the wall (|y_0| <= start_noise < gate_halfheight) and takes
`pointmass_min_steps(params)` steps (7 by default, whatever the jitter); with discount gamma the
optimum is gamma^(steps - 1) * goal_reward (`pointmass_optimal_return`).

What a unimodal policy loses (bandit defaults, d = 1, expected reward per step in units of the
optimum 1.0; `tests/test_multimodal_env.py` computes these by quadrature and checks them):
- Averaging: a Gaussian centred on the valley (the symmetric stationary point of a Gaussian
  policy's mean) earns at most ~0.04 at any std; a mixture with a narrow component (std 0.045) on
  each mode earns ~0.91.
- Entropy: at equal policy entropy a separated 2-mixture's components are half as wide (its
  entropy is a component's plus log 2). At SAC's default target entropy, -1 nat per action dim
  (Gaussian std 0.089), the best Gaussian earns ~0.73 and the 2-mixture ~0.91. With two modes
  this is the whole entropy price: log 2 nats buy a factor 2 in std, no more.
- Blocking: a Gaussian collapsed onto one mode (std 0.045) earns ~0 when that mode is blocked, and
  its mean's gradient points away from the open mode (the valley's tail); ignoring the context it
  averages ~0.68 at p_block = 0.5. A 50/50 mixture of the same component std keeps ~0.45 there, its
  mixing-weight gradient (~0.23) moves it to the open mode, and reweighted on the context it earns
  ~0.91 in every context.
With the same per-component std and the context observed, a Gaussian on the open mode matches the
mixture exactly: a deterministic policy is optimal here, so unimodality costs return only through
the entropy a policy must keep or through learning dynamics (averaging, being stuck on a blocked
mode), not in the best achievable return.

All steps are deterministic (the key is unused), `info` is `{}` (as the gymnax and brax adapters);
`envs.make` adds auto-reset. `make(env_id, **overrides)` builds either env with validated params.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import spaces
from envs.core import Environment, check_override_keys

BANDIT_ID = "multimodal/bandit"
POINTMASS_ID = "multimodal/pointmass"
IDS = (BANDIT_ID, POINTMASS_ID)

# ---------------------------------------------------------------------------------------------
# params


@struct.dataclass
class BanditParams:
    """`multimodal/bandit` settings; numeric ones are pytree leaves (vmappable), `action_dim` static.

    horizon: steps per episode (the context is fixed within an episode).
    mode: m, the modes sit at a = +-m e_0 (0 < m <= 1).
    width: std of each Gaussian reward bump (> 0).
    valley_penalty: reward at the valley a_0 = 0 is about -valley_penalty (>= 0).
    p_block: probability that an episode blocks one mode (left or right, equal odds).
    action_dim: d, the action is in [-1, 1]^d.
    """

    horizon: int = 1
    mode: float = 0.6
    width: float = 0.1
    valley_penalty: float = 0.5
    p_block: float = 0.5
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class PointMassParams:
    """`multimodal/pointmass` settings (all pytree leaves; lengths in arena units, arena [-1, 1]^2).

    max_steps: truncation limit. step_size: distance per unit action per step.
    goal_x, goal_radius: goal disks at (+-goal_x, 0). goal_reward: paid on entering an open goal.
    valley_halfwidth, gate_halfheight: the wall is |x| < valley_halfwidth, |y| >= gate_halfheight.
    valley_penalty: cost per step that ends in the wall. start_noise: uniform start jitter.
    p_block: probability that an episode blocks one goal (left or right, equal odds).
    """

    max_steps: int = 40
    step_size: float = 0.1
    goal_x: float = 0.8
    goal_radius: float = 0.15
    goal_reward: float = 1.0
    valley_halfwidth: float = 0.2
    gate_halfheight: float = 0.1
    valley_penalty: float = 0.05
    start_noise: float = 0.02
    p_block: float = 0.0


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def validate_bandit_params(p: BanditParams) -> None:
    """Raises `ValueError` on an invalid (concrete) `BanditParams`."""
    _require(int(p.action_dim) >= 1, f"action_dim must be >= 1, got {p.action_dim}")
    _require(int(p.horizon) >= 1, f"horizon must be >= 1, got {p.horizon}")
    _require(0.0 < float(p.mode) <= 1.0, f"mode must be in (0, 1], got {p.mode}")
    _require(float(p.width) > 0.0, f"width must be > 0, got {p.width}")
    _require(float(p.valley_penalty) >= 0.0, f"valley_penalty must be >= 0, got {p.valley_penalty}")
    _require(0.0 <= float(p.p_block) <= 1.0, f"p_block must be in [0, 1], got {p.p_block}")


def pointmass_min_steps(p: PointMassParams) -> int:
    """Steps the straight route from the origin needs to enter a goal disk (start jitter only
    brings one goal closer: with the defaults every start needs 7)."""
    dist = float(p.goal_x) - float(p.goal_radius)
    return max(1, math.ceil(dist / float(p.step_size) - 1e-6))


def validate_pointmass_params(p: PointMassParams) -> None:
    """Raises `ValueError` on an invalid (concrete) `PointMassParams`, including geometry that
    would make the documented optimum (`goal_reward`, wall never touched) wrong."""
    _require(int(p.max_steps) >= 1, f"max_steps must be >= 1, got {p.max_steps}")
    _require(float(p.step_size) > 0.0, f"step_size must be > 0, got {p.step_size}")
    _require(float(p.goal_radius) > 0.0, f"goal_radius must be > 0, got {p.goal_radius}")
    _require(float(p.goal_reward) > 0.0, f"goal_reward must be > 0, got {p.goal_reward}")
    _require(float(p.valley_penalty) >= 0.0, f"valley_penalty must be >= 0, got {p.valley_penalty}")
    _require(0.0 <= float(p.p_block) <= 1.0, f"p_block must be in [0, 1], got {p.p_block}")
    _require(float(p.start_noise) >= 0.0, f"start_noise must be >= 0, got {p.start_noise}")
    _require(float(p.valley_halfwidth) >= 0.0, "valley_halfwidth must be >= 0")
    _require(
        float(p.start_noise) < float(p.gate_halfheight),
        f"start_noise ({p.start_noise}) must be < gate_halfheight ({p.gate_halfheight}) so the "
        "straight route to a goal never touches the wall",
    )
    _require(
        float(p.valley_halfwidth) + float(p.start_noise) <= float(p.goal_x) - float(p.goal_radius)
        and float(p.goal_x) + float(p.goal_radius) <= 1.0,
        "the goal disks must lie inside the arena [-1, 1]^2, clear of the wall band and the start",
    )
    steps = pointmass_min_steps(p)
    _require(
        steps < int(p.max_steps),
        f"a goal needs {steps} steps from the origin but max_steps is only {p.max_steps}",
    )


def _from_overrides(cls, env_id: str, overrides: dict) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_override_keys(env_id, overrides, list(fields))
    defaults = cls()
    values = {}
    for k, v in overrides.items():
        if isinstance(getattr(defaults, k), int):
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"{k} must be an integer, got {v!r}")
            values[k] = int(v)
        else:
            values[k] = float(v)
    return defaults.replace(**values)


# ---------------------------------------------------------------------------------------------
# reward landscapes (pure functions, usable for plots and tests)


def _draw_blocked(key: jax.Array, p_block) -> jax.Array:
    """bool [2] = (left blocked, right blocked): one of them with probability p_block."""
    u = jax.random.uniform(key, ())
    half = 0.5 * p_block
    return jnp.stack([u < half, (u >= half) & (u < p_block)])


def bandit_reward(action: jax.Array, blocked: jax.Array, params: BanditParams) -> jax.Array:
    """Per-step reward `[...]` for actions `[..., d]` (clipped to [-1, 1]) in contexts `blocked`
    (bool `[..., 2]` = left, right blocked; broadcast against the action's batch shape).

    1.0 exactly at an open mode a = +-m e_0, 0 at a blocked one, -valley_penalty at a_0 = 0.
    """
    a = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
    blocked = jnp.asarray(blocked, jnp.bool_)
    m, w = params.mode, params.width
    a0 = a[..., 0]
    rest = jnp.sum(jnp.square(a[..., 1:]), axis=-1)
    inv = -0.5 / (w * w)
    bump_left = jnp.exp(inv * (jnp.square(a0 + m) + rest))
    bump_right = jnp.exp(inv * (jnp.square(a0 - m) + rest))
    bump_left = jnp.where(blocked[..., 0], 0.0, bump_left)
    bump_right = jnp.where(blocked[..., 1], 0.0, bump_right)
    valley = jnp.square(jax.nn.relu(1.0 - jnp.square(a0 / m)))
    return jnp.maximum(bump_left, bump_right) - params.valley_penalty * valley


def bandit_optimal_return(params: BanditParams) -> float:
    """The optimal (undiscounted) episode return: 1.0 per step, whatever the context."""
    return float(params.horizon)


def pointmass_in_wall(pos: jax.Array, params: PointMassParams) -> jax.Array:
    """bool `[...]` for positions `[..., 2]`: inside the penalty band outside the start gate."""
    x, y = pos[..., 0], pos[..., 1]
    return (jnp.abs(x) < params.valley_halfwidth) & (jnp.abs(y) >= params.gate_halfheight)


def pointmass_goal_reached(pos: jax.Array, blocked: jax.Array, params: PointMassParams):
    """bool `[..., 2]` (left, right): `pos` `[..., 2]` is inside that goal disk and it is open."""
    goals = jnp.array([[-1.0, 0.0], [1.0, 0.0]], jnp.float32) * params.goal_x
    d2 = jnp.sum(jnp.square(pos[..., None, :] - goals), axis=-1)
    return (d2 <= params.goal_radius**2) & ~jnp.asarray(blocked, jnp.bool_)


def pointmass_reward(pos: jax.Array, blocked: jax.Array, params: PointMassParams) -> jax.Array:
    """Reward `[...]` of a step that ends at `pos` `[..., 2]`: goal_reward on entering an open goal,
    -valley_penalty inside the wall, 0 elsewhere."""
    reached = jnp.any(pointmass_goal_reached(pos, blocked, params), axis=-1)
    wall = pointmass_in_wall(pos, params)
    return jnp.where(reached, params.goal_reward, 0.0) - jnp.where(wall, params.valley_penalty, 0.0)


def pointmass_optimal_return(params: PointMassParams, gamma: float = 1.0) -> float:
    """The optimal episode return: goal_reward (exact for gamma = 1), discounted by
    gamma^(steps - 1) with steps = `pointmass_min_steps` (a start at the origin)."""
    return float(params.goal_reward) * float(gamma) ** (pointmass_min_steps(params) - 1)


# ---------------------------------------------------------------------------------------------
# envs


@struct.dataclass
class BanditState:
    blocked: jax.Array  # bool [2]: left, right mode blocked
    t: jax.Array  # int32 steps taken


@struct.dataclass
class PointMassState:
    pos: jax.Array  # float32 [2]
    blocked: jax.Array  # bool [2]: left, right goal blocked
    t: jax.Array  # int32 steps taken


class MultimodalBandit(Environment):
    """`multimodal/bandit`, without auto-reset (see the module docstring)."""

    def __init__(self, params: BanditParams | None = None):
        params = BanditParams() if params is None else params
        validate_bandit_params(params)
        self._default_params = params

    @property
    def name(self) -> str:
        return BANDIT_ID

    @property
    def default_params(self) -> BanditParams:
        return self._default_params

    def _obs(self, state: BanditState, params: BanditParams) -> jax.Array:
        t = state.t.astype(jnp.float32) / params.horizon
        return jnp.concatenate([state.blocked.astype(jnp.float32), t[None]])

    def reset(self, key: jax.Array, params: BanditParams):
        state = BanditState(blocked=_draw_blocked(key, params.p_block), t=jnp.zeros((), jnp.int32))
        return self._obs(state, params), state

    def step(self, key: jax.Array, state: BanditState, action: jax.Array, params: BanditParams):
        del key  # deterministic
        reward = bandit_reward(action, state.blocked, params)
        state = state.replace(t=state.t + 1)
        terminated = state.t >= params.horizon
        truncated = jnp.zeros((), jnp.bool_)
        return self._obs(state, params), state, reward, terminated, truncated, {}

    def observation_space(self, params: BanditParams) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (3,))

    def action_space(self, params: BanditParams) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (int(params.action_dim),))

    def __repr__(self) -> str:
        return f"MultimodalBandit({self._default_params})"


class MultimodalPointMass(Environment):
    """`multimodal/pointmass`, without auto-reset (see the module docstring)."""

    def __init__(self, params: PointMassParams | None = None):
        params = PointMassParams() if params is None else params
        validate_pointmass_params(params)
        self._default_params = params

    @property
    def name(self) -> str:
        return POINTMASS_ID

    @property
    def default_params(self) -> PointMassParams:
        return self._default_params

    def _obs(self, state: PointMassState, params: PointMassParams) -> jax.Array:
        t = state.t.astype(jnp.float32) / params.max_steps
        return jnp.concatenate([state.pos, state.blocked.astype(jnp.float32), t[None]])

    def reset(self, key: jax.Array, params: PointMassParams):
        key_pos, key_block = jax.random.split(key)
        noise = params.start_noise
        pos = jax.random.uniform(key_pos, (2,), jnp.float32, -noise, noise)
        blocked = _draw_blocked(key_block, params.p_block)
        state = PointMassState(pos=pos, blocked=blocked, t=jnp.zeros((), jnp.int32))
        return self._obs(state, params), state

    def step(
        self, key: jax.Array, state: PointMassState, action: jax.Array, params: PointMassParams
    ):
        del key  # deterministic
        velocity = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        pos = jnp.clip(state.pos + params.step_size * velocity, -1.0, 1.0)
        reward = pointmass_reward(pos, state.blocked, params)
        terminated = jnp.any(pointmass_goal_reached(pos, state.blocked, params))
        state = PointMassState(pos=pos, blocked=state.blocked, t=state.t + 1)
        truncated = state.t >= params.max_steps
        return self._obs(state, params), state, reward, terminated, truncated, {}

    def observation_space(self, params: PointMassParams) -> spaces.Box:
        return spaces.Box(np.array([-1, -1, 0, 0, 0]), np.array([1, 1, 1, 1, 1]), (5,))

    def action_space(self, params: PointMassParams) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (2,))

    def __repr__(self) -> str:
        return f"MultimodalPointMass({self._default_params})"


def make(env_id: str, **overrides) -> tuple[Environment, Any]:
    """`(raw env, params)` for `multimodal/bandit` or `multimodal/pointmass`; `overrides` set
    `BanditParams` / `PointMassParams` fields. Unknown keys or invalid values raise `ValueError`."""
    if env_id == BANDIT_ID:
        params = _from_overrides(BanditParams, env_id, overrides)
        return MultimodalBandit(params), params
    if env_id == POINTMASS_ID:
        params = _from_overrides(PointMassParams, env_id, overrides)
        return MultimodalPointMass(params), params
    raise ValueError(f"unknown multimodal env id {env_id!r}; known: {', '.join(IDS)}")
