"""The learned objectives of meta/ in purejaxrl's objective registry, added by one explicit call.

purejaxrl imports nothing from meta, so its registry (`purejaxrl.objectives.REGISTRY`) holds its
own objectives only; `register()` adds these, after which a config or a checkpoint may name them
(`objective: {name: lpo, path: ...}`). The experiment commands call it before building agents.
"""

from __future__ import annotations

from meta import drift, lpg_rule
from purejaxrl import objectives

LEARNED = {
    "lpo": drift.build_lpo,  # a learned drift: path=<saved drift> or shipped=<name>
    "dpo": drift.build_dpo,  # DPO's closed-form drift (alpha, beta)
    "mdpo": drift.build_mdpo,  # on-policy MDPO (step_size, min_step_size, anneal)
    "lpg": lpg_rule.build_lpg,  # a learned LPG rule: path=<saved rule>
}


def register() -> None:
    """Adds the LEARNED objectives to purejaxrl's registry (again: no change)."""
    for name, builder in LEARNED.items():
        objectives.register(name, builder)
