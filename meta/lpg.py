"""LPG and TA-LPG: a learned update rule for the on-policy loop, meta-trained with ES or
meta-gradients (Oh et al. 2020, arXiv 2007.08794; TA-LPG: Jackson et al., ICLR 2024).

    from meta import lpg
    params = lpg.init_params(key, time_aware=False)          # a fresh rule (y width 8, GRU 256)
    agent = a2c.make_agent(cfg, lpg.objective(params))      # an A2C agent that learns by the rule
    meta_train = lpg.make_meta_train(lpg.LPGConfig(...), levels)   # (key) -> MetaOutput, ES
    mg = lpg.make_meta_gradient_train(lpg.LPGConfig(...), lpg.MetaGradientConfig(...))
    state, metrics = mg.train(key)                          # meta-gradients over K agent updates
    lpg.save(path, params, info); params, info = lpg.load(path, y_size=None)

The rule (network, features, the agent objective "lpg", save/load) is in meta/lpg_rule.py;
meta-training by ES and the agents' settings (`LPGConfig`, level samplers) in meta/lpg_es.py; by
meta-gradient over a persistent population with a curriculum in meta/lpg_meta_gradient.py.
"""

from meta.lpg_es import (  # noqa: F401
    CPU_INNER,
    LPGConfig,
    MetaOutput,
    level_lifetime,
    level_sampler,
    make_env,
    make_fitness,
    make_level_fitness,
    make_meta_train,
)
from meta.lpg_meta_gradient import (  # noqa: F401
    MetaGradient,
    MetaGradientConfig,
    MetaGradientState,
    SampledLevels,
    make_meta_gradient_train,
    masked_mean,
    pick,
    rule_optimizer,
    stagger_offsets,
)
from meta.lpg_rule import (  # noqa: F401
    HIDDEN,
    KL_WEIGHT,
    Y_SIZE,
    LPGNet,
    LPGObjective,
    RuleShape,
    apply,
    describe,
    forward,
    init_params,
    lifetime_features,
    load,
    objective,
    save,
    step_features,
)
