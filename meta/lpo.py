"""LPO and TA-LPO, learned drift objectives, with the hand-written DPO and MDPO on the same interface.

    from meta import lpo
    loss = lpo.learned_loss(params, time_aware=True)       # a per-sample policy loss for PPO
    loss = lpo.dpo(alpha=2.0, beta=0.6)                    # closed-form DPO; lpo.mdpo(...) for MDPO
    meta_train = lpo.make_meta_train(lpo.LPOConfig(...))   # (key) -> MetaOutput, ES over drifts
    lpo.save(path, params, info); params, info = lpo.load(path, time_aware=None)
    params, info = lpo.load(lpo.shipped_path("lpo-cpu"))  # a drift meta-trained by this project

The drifts, their losses, save/load and the objective registry ("lpo", "dpo", "mdpo") are in
meta/drift.py; meta-training with evolution strategies in meta/lpo_train.py.
"""

from meta.drift import (  # noqa: F401
    DRIFT_OFFSET,
    FEATURE_SETS,
    HIDDEN,
    MANIFEST,
    NUM_FEATURES,
    PPO_CLIP_EPS,
    DriftNet,
    dpo,
    dpo_drift,
    drift,
    features,
    init_params,
    is_time_aware,
    kl_estimate,
    learned_loss,
    load,
    mdpo,
    mdpo_step_size,
    mirror_loss,
    ppo_drift,
    save,
    shipped,
    shipped_path,
)
from meta.lpo_train import LPOConfig, MetaOutput, make_meta_train  # noqa: F401
