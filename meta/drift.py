"""Drift functions as per-sample policy losses: learned LPO / TA-LPO, closed-form DPO, on-policy MDPO
(their public names are `meta.lpo`'s: import that).

Mirror learning (Lu et al., "Discovered Policy Optimisation", NeurIPS 2022, arXiv 2210.05639) writes
a policy loss as

    loss = -mean(r A - drift(r, A)),    r = pi_new(a|s) / pi_old(a|s),  A the normalised advantage,

with drift >= 0 and drift = 0 at r = 1. PPO-clip is the drift relu((r - clip(r, 1-eps, 1+eps)) A).

- LPO: drift = relu(net(x) - 1e-4), net = Dense(128, no bias) -> tanh -> Dense(1, no bias) on the
  8 features x of (r, A) (`features`); with `ppo_init`, relu(ppo_drift + net(x) - 1e-4), so that a
  zero network is PPO-clip (eps = 0.2). Every feature is 0 at r = 1 and the net has no bias, so
  net(x) = 0 there and the drift is 0 whatever the parameters.
- TA-LPO (Jackson et al., ICLR 2024, arXiv 2402.05828): the same net on [x, (n/N) x], n/N the
  fraction of training done, so the drift can change over training (a clipping schedule).
- DPO: the closed-form drift LPO discovered (alpha = 2, beta = 0.6, the paper's values).
- MDPO: on-policy mirror descent policy optimisation with an annealed KL step size (see `mdpo`).

Each factory returns a per-sample policy loss for the on-policy loop (purejaxrl/losses.py):
`policy_loss(log_ratio [B], advantages [B], progress [], extras) -> (loss [], aux)`. The
objectives "lpo" (option `path`: a drift saved with `save`, or `shipped`: the name of one in
meta/learned, e.g. "lpo-cpu"), "dpo" (alpha, beta) and "mdpo" (step_size, min_step_size, anneal)
are built by `build_lpo`, `build_dpo`, `build_mdpo` (registered by meta/objectives.py).

    params = lpo.init_params(jax.random.key(0), time_aware=True)  # kernels [16, 128], [128, 1]
    loss = lpo.learned_loss(params, time_aware=True)              # ppo.make_train(cfg, loss)
    lpo.save("drifts/ta", params, {"trained_on": {"env": "CartPole-v1"}})
    params, info = lpo.load("drifts/ta", time_aware=True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from meta import saved
from purejaxrl import config as C
from purejaxrl import objectives

HIDDEN = 128  # width of the drift net's hidden layer
NUM_FEATURES = 8  # LPO's inputs; TA-LPO has twice as many
DRIFT_OFFSET = 1e-4  # drift = relu(net - DRIFT_OFFSET)
PPO_CLIP_EPS = 0.2  # the clip range of the PPO-initialised drift
FEATURE_SETS = {False: "lpo-8", True: "ta-lpo-16"}  # time_aware -> the name saved in info
# Drifts meta-trained by this project (meta/learned/README.md says how and how well).
SHIPPED_DIR = Path(__file__).parent / "learned"

# --------------------------------------------------------------------------- features and net


def features(log_ratio, advantages, progress=None):
    """LPO's inputs: `[B, 8]` = [log r, (log r)^2, 1 - r, (1 - r)^2, and each of these times A].

    log_ratio, advantages `[B]`. With `progress` (n/N, `[]` or `[B]`), TA-LPO's `[B, 16]` = [x, (n/N) x].
    """
    ratio = jnp.exp(log_ratio)
    base = jnp.stack([log_ratio, log_ratio**2, 1.0 - ratio, (1.0 - ratio) ** 2], axis=-1)
    x = jnp.concatenate([base, base * advantages[..., None]], axis=-1)
    if progress is None:
        return x
    p = jnp.expand_dims(jnp.asarray(progress, x.dtype), -1)
    return jnp.concatenate([x, p * x], axis=-1)


class DriftNet(nn.Module):
    """Dense(hidden, no bias) -> tanh -> Dense(1, no bias): `[B, F]` -> `[B]`."""

    hidden: int = HIDDEN

    @nn.compact
    def __call__(self, x):
        h = nn.tanh(nn.Dense(self.hidden, use_bias=False)(x))
        return nn.Dense(1, use_bias=False)(h)[..., 0]


def init_params(key, time_aware: bool = False, hidden: int = HIDDEN):
    """Flax params of the drift net: kernels `[8 or 16, hidden]` and `[hidden, 1]`."""
    num_inputs = NUM_FEATURES * (2 if time_aware else 1)
    return DriftNet(hidden).init(key, jnp.zeros((1, num_inputs), jnp.float32))


def _kernels(params):
    try:
        return params["params"]["Dense_0"]["kernel"], params["params"]["Dense_1"]["kernel"]
    except (KeyError, TypeError):
        raise ValueError(
            "drift params must be flax params {'params': {'Dense_0': {'kernel'}, 'Dense_1': "
            "{'kernel'}}} as lpo.init_params makes them"
        ) from None


def is_time_aware(params) -> bool:
    """Whether `params` take TA-LPO's 16 inputs (True) or LPO's 8 (False); ValueError otherwise."""
    num_inputs = np.shape(_kernels(params)[0])[0]
    if num_inputs not in (NUM_FEATURES, 2 * NUM_FEATURES):
        raise ValueError(f"drift params take {num_inputs} inputs; LPO takes 8, TA-LPO 16")
    return num_inputs == 2 * NUM_FEATURES


def _check_time_aware(params, time_aware: bool) -> None:
    if is_time_aware(params) != bool(time_aware):
        have = FEATURE_SETS[is_time_aware(params)]
        raise ValueError(
            f"drift params take {have} features, but time_aware={bool(time_aware)} asks for "
            f"{FEATURE_SETS[bool(time_aware)]}"
        )


def ppo_drift(log_ratio, advantages, clip_eps=PPO_CLIP_EPS):
    """PPO-clip's drift relu((r - clip(r, 1-eps, 1+eps)) A) `[B]`: -mean(r A - it) is PPO's loss."""
    ratio = jnp.exp(log_ratio)
    return jax.nn.relu((ratio - jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)) * advantages)


def drift(params, log_ratio, advantages, progress=None, ppo_init: bool = False):
    """The learned drift `[B]` >= 0, zero at r = 1: relu(net(x) - 1e-4), or with `ppo_init`
    relu(ppo_drift + net(x) - 1e-4). `progress` (n/N) is required by TA-LPO params, refused by LPO's."""
    _check_time_aware(params, progress is not None)
    hidden = np.shape(_kernels(params)[0])[1]
    net = DriftNet(hidden).apply(params, features(log_ratio, advantages, progress))
    if ppo_init:
        net = ppo_drift(log_ratio, advantages) + net
    return jax.nn.relu(net - DRIFT_OFFSET)


# --------------------------------------------------------------------------- policy losses


def mirror_loss(drift_fn: Callable) -> Callable:
    """The per-sample policy loss -mean(r A - drift) for `drift_fn(log_ratio [B], advantages [B],
    progress []) -> [B]`; aux: mean drift and the k3 estimate of KL(old || new)."""

    def loss(log_ratio, advantages, progress, extras):
        del extras
        ratio = jnp.exp(log_ratio)
        d = drift_fn(log_ratio, advantages, progress)
        aux = {"drift": jnp.mean(d), "approx_kl": jnp.mean((ratio - 1.0) - log_ratio)}
        return -jnp.mean(ratio * advantages - d), aux

    return loss


def learned_loss(params, time_aware: bool = False, ppo_init: bool = False) -> Callable:
    """The policy loss of a learned drift (LPO; TA-LPO with `time_aware`, which reads the loop's
    progress n/N). `params` may be traced (an ES population member)."""
    _check_time_aware(params, time_aware)
    return mirror_loss(
        lambda log_ratio, advantages, progress: drift(
            params, log_ratio, advantages, progress if time_aware else None, ppo_init
        )
    )


def _check_positive(where: str, **values) -> None:
    for name, value in values.items():
        if C.is_concrete(value) and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {name}={value!r} must be a positive number")


def dpo_drift(log_ratio, advantages, alpha=2.0, beta=0.6):
    """DPO's drift `[B]`: relu((r-1)A - alpha tanh((r-1)A / alpha)) where A >= 0,
    relu(log(r) A - beta tanh(log(r) A / beta)) where A < 0."""
    pos = jnp.expm1(log_ratio) * advantages
    neg = log_ratio * advantages
    d_pos = jax.nn.relu(pos - alpha * jnp.tanh(pos / alpha))
    d_neg = jax.nn.relu(neg - beta * jnp.tanh(neg / beta))
    return jnp.where(advantages >= 0, d_pos, d_neg)


def dpo(alpha=2.0, beta=0.6) -> Callable:
    """Discovered Policy Optimisation (Lu et al. 2022): -mean(r A - dpo_drift). alpha, beta > 0
    (may be traced)."""
    _check_positive("lpo.dpo", alpha=alpha, beta=beta)
    return mirror_loss(
        lambda log_ratio, advantages, progress: dpo_drift(log_ratio, advantages, alpha, beta)
    )


def mdpo_step_size(progress, step_size=1.0, min_step_size=0.05, anneal=True):
    """MDPO's t_k `[]`: max(step_size * (1 - n/N), min_step_size) when annealed, else step_size."""
    t = step_size * (1.0 - progress) if anneal else step_size * jnp.ones_like(progress)
    return jnp.maximum(t, min_step_size)


def kl_estimate(log_ratio):
    """Per-sample r log r - r + 1 `[B]`, r = pi/pi_old: >= 0, zero only at r = 1, and on samples
    a ~ pi_old its mean is E_old[r log r] = KL(pi || pi_old) (since E_old[r] = 1)."""
    return jnp.exp(log_ratio) * log_ratio - jnp.expm1(log_ratio)


def mdpo(step_size=1.0, min_step_size=0.05, anneal: bool = True) -> Callable:
    """On-policy Mirror Descent Policy Optimization (Tomar, Shani, Efroni, Ghavamzadeh, ICLR 2022,
    arXiv 2005.09814) as a drift: drift = kl_estimate(log_ratio) / t_k, so the loss is

        -mean(r A - (r log r - r + 1) / t_k).

    On-policy MDPO maximises E_{s, a ~ pi_old}[r A] - (1/t_k) E_s[KL(pi || pi_old)] at iteration k
    with several gradient steps from pi_old (the authors' code: the KL in closed form, in that
    direction, standardised advantages, 5 full-batch steps; here the loop's epochs x minibatches).
    The KL is replaced by a per-sample estimator on the rollout's samples, `kl_estimate`, which is
    unbiased, >= 0 and 0 at r = 1, as a drift must be.

    Step size: the paper anneals t_k linearly from 1 towards 0 over the K iterations (the
    authors' code, mdpo_on/mdpo.py: t_k = 1 - (k-1)/K with k counting iterations from 0, so
    t_0 = 1 + 1/K); here t_k = max(step_size * (1 - n/N), min_step_size), n/N
    the loop's progress (`anneal=False`: t_k = step_size throughout). The floor `min_step_size`
    (default 0.05: a KL weight 1/t_k <= 20) guards the blow-up of 1/t_k at the end of training.
    Defaults: the paper's t_0 = 1. Hyper-parameters may be traced; positive when concrete.
    """
    _check_positive("lpo.mdpo", step_size=step_size, min_step_size=min_step_size)

    def mdpo_drift(log_ratio, advantages, progress):
        del advantages
        return kl_estimate(log_ratio) / mdpo_step_size(progress, step_size, min_step_size, anneal)

    base = mirror_loss(mdpo_drift)

    def loss(log_ratio, advantages, progress, extras):
        value, aux = base(log_ratio, advantages, progress, extras)
        t = mdpo_step_size(progress, step_size, min_step_size, anneal)
        return value, {**aux, "kl": jnp.mean(kl_estimate(log_ratio)), "mdpo_step_size": t}

    return loss


# --------------------------------------------------------------------------- save / load

MANIFEST = saved.MANIFEST  # every file orbax wrote, with its size and SHA-256
FORMAT_VERSION = 1
_REQUIRED_INFO = {"format", "features", "time_aware", "ppo_init", "hidden", "shapes", "digest"}
_KIND = saved.Kind("drift", "lpo.save")


def save(path, params, info: Mapping[str, Any] | None = None) -> Path:
    """Writes the drift `params` and its info (JSON) to the folder `path` with orbax; returns it.

    `info` may hold "ppo_init" (default False), "trained_on" (free-form: envs, budget, ES settings;
    default {}) and any other JSON values; "features" ("lpo-8" / "ta-lpo-16"), "time_aware" and
    "hidden" are taken from the params (ValueError if `info` says otherwise). The folder is written
    beside `path`, given a SHA-256 manifest, then moved into place; an existing saved drift at
    `path` is replaced, any other existing path is refused (meta/saved.py).
    """
    time_aware = is_time_aware(params)
    record = {"ppo_init": False, "trained_on": {}, **dict(info or {})}
    derived = {
        "features": FEATURE_SETS[time_aware],
        "time_aware": time_aware,
        "hidden": int(np.shape(_kernels(params)[0])[1]),
    }
    for key, value in derived.items():
        if key in record and record[key] != value:
            raise ValueError(
                f"lpo.save: info[{key!r}]={record[key]!r}, but the params have {value!r}"
            )
    record.update(derived, format=FORMAT_VERSION, ppo_init=bool(record["ppo_init"]))
    return saved.write(path, params, record, _KIND)


def load(path, time_aware: bool | None = None):
    """(params, info) of the drift saved at `path` (see `save`).

    `time_aware` (None: whatever was saved) must match the saved features, else ValueError naming
    both. A missing folder, a file missing or altered since the save, or contents that fail their
    digest raise ValueError (purejaxrl.checkpoint.CheckpointError) saying which.
    """
    path = Path(path).absolute()
    info = saved.read_info(path, _KIND, _REQUIRED_INFO, FORMAT_VERSION)
    if time_aware is not None and bool(time_aware) != info["time_aware"]:
        raise ValueError(
            f"the drift at {path} was saved with {info['features']} features "
            f"(time_aware={info['time_aware']}), but time_aware={bool(time_aware)} asks for "
            f"{FEATURE_SETS[bool(time_aware)]}"
        )
    time_aware, hidden = bool(info["time_aware"]), int(info["hidden"])
    abstract = jax.eval_shape(lambda key: init_params(key, time_aware, hidden), jax.random.key(0))
    return saved.read_params(path, _KIND, abstract, info), info


def shipped() -> list[str]:
    """Names of the learned drifts that ship with the package (meta/learned/README.md)."""
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / MANIFEST).is_file())


def shipped_path(name: str) -> Path:
    """Folder of the shipped drift `name` (e.g. "lpo-cpu", "ta-lpo-cpu"), for `load`;
    ValueError with the known names otherwise."""
    names = shipped()
    if name not in names:
        raise ValueError(
            f"no shipped drift {name!r}{C.close_match(name, names)} (shipped: {names})"
        )
    return SHIPPED_DIR / name


_shipped_names = shipped  # for build_lpo, whose option `shipped` hides the function


# --------------------------------------------------------------------------- objectives


def build_lpo(cfg, path=None, shipped=None) -> objectives.ActorCritic:
    """GAE + the learned drift saved at `path` (relative to the working directory) or the one
    shipped as `shipped` (see `shipped_path`), loaded now; time_aware and ppo_init come from its
    info."""
    where = f"{type(cfg).__name__}.objective 'lpo'"
    if (path is None) == (shipped is None):
        raise ValueError(
            f"{where}: needs either path=<folder of a drift saved with meta.lpo.save> or "
            f"shipped=<one of {_shipped_names()}>"
        )
    try:
        params, info = load(path if shipped is None else shipped_path(shipped))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return objectives.actor_critic(cfg, learned_loss(params, info["time_aware"], info["ppo_init"]))


def build_dpo(cfg, alpha=2.0, beta=0.6) -> objectives.ActorCritic:
    """GAE + DPO's closed-form drift."""
    return objectives.actor_critic(cfg, dpo(alpha, beta))


def build_mdpo(cfg, step_size=1.0, min_step_size=0.05, anneal=True) -> objectives.ActorCritic:
    """GAE + on-policy MDPO's annealed KL drift."""
    return objectives.actor_critic(cfg, mdpo(step_size, min_step_size, anneal))
