"""The optimal expected return of a fixed-spawn grid-world level, by value iteration (numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.gridworld.levels import COLS, MAX_SIZE, MOVES, NUM_ACTIONS, ROWS, Level, validate_level


def optimal_return(level: Level, gamma: float = 1.0, horizon: int | None = None) -> float:
    """Expected return of the optimal policy from the start of an episode of the fixed-spawn
    `level` (concrete, `random_spawn=False`): backward induction over `horizon` steps (default
    `max_steps`) on states (agent cell, present objects), discounting by `gamma`. Cost
    O(horizon * cells * 4^objects): small levels (the five LPG configs: under a second each)."""
    validate_level(level)
    v = {f.name: np.asarray(getattr(level, f.name)) for f in dataclasses.fields(Level)}
    if v["height"].shape != ():
        raise ValueError("optimal_return takes one level, not a batch")
    if bool(v["random_spawn"]):
        raise ValueError("optimal_return needs fixed spawn cells (random_spawn=False)")
    h, w = int(v["height"]), int(v["width"])
    free = (ROWS < h) & (COLS < w) & ~v["walls"].astype(bool)
    cells = np.argwhere(free)  # [C, 2]
    index = -np.ones((MAX_SIZE, MAX_SIZE), int)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    active = np.flatnonzero(v["obj_mask"])
    n, num_masks = len(active), 2 ** len(active)
    if n > 10:
        raise ValueError(f"optimal_return: {n} objects is too many (2^n present-object masks)")
    if n == 0:
        return 0.0
    obj_at = -np.ones(len(cells), int)
    for k, i in enumerate(active):
        obj_at[index[tuple(v["obj_pos"][i])]] = k
    reward = v["obj_reward"][active].astype(np.float64)
    p_term = v["obj_p_terminate"][active].astype(np.float64)
    p_respawn = v["obj_p_respawn"][active].astype(np.float64)

    nxt = np.empty((NUM_ACTIONS, len(cells)), int)  # next cell index per action
    for a, (dr, dc) in enumerate(MOVES):
        r, c = cells[:, 0] + dr, cells[:, 1] + dc
        ok = (r >= 0) & (r < MAX_SIZE) & (c >= 0) & (c < MAX_SIZE)
        r, c = np.where(ok, r, cells[:, 0]), np.where(ok, c, cells[:, 1])
        ok &= free[r, c]
        nxt[a] = np.where(ok, index[r, c], np.arange(len(cells)))

    masks = np.arange(num_masks)
    bits = (masks[:, None] >> np.arange(n)) & 1  # [M, n]
    # P0[m, m']: present-object mask m at the start of a step -> m' after respawns (no collection).
    stay = bits[:, None, :] == 1
    then = bits[None, :, :] == 1
    per = np.where(stay, then, np.where(then, p_respawn, 1.0 - p_respawn))
    p0 = per.prod(-1)  # [M, M]
    clear = [masks & ~(1 << k) for k in range(n)]

    value = np.zeros((len(cells), num_masks))
    for _ in range(int(v["max_steps"]) if horizon is None else int(horizon)):
        # ev[k, c, m]: expected next value when the step ends on c from mask m, object k collected
        # (k = n: none); a collected object is absent after the step and cannot respawn in it.
        vk = np.stack([value[:, cl] for cl in clear] + [value])  # [n + 1, C, M]
        ev = np.einsum("kcn,mn->kcm", vk, p0)
        q = np.empty((NUM_ACTIONS, len(cells), num_masks))
        for a in range(NUM_ACTIONS):
            c2, k = nxt[a], obj_at[nxt[a]]
            hit = (k >= 0)[:, None] & (bits[:, np.maximum(k, 0)].T == 1)  # [C, M]
            kk = np.where(hit, k[:, None], n)
            r = np.where(hit, reward[np.maximum(k, 0)][:, None], 0.0)
            cont = np.where(hit, 1.0 - p_term[np.maximum(k, 0)][:, None], 1.0)
            q[a] = r + gamma * cont * ev[kk, c2[:, None], masks[None, :]]
        value = q.max(axis=0)
    return float(value[index[tuple(v["start"])], num_masks - 1])
