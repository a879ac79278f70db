"""Meta-train an LPG / TA-LPG update rule on random grid worlds (domain randomisation or GROOVE's
level curricula) with meta-gradients or ES, then meta-test it against A2C and PPO tuned per task
(normalised return: (R - R_random) / (R_A2C - R_random)); `--compare-ta` runs the TA comparison.
Settings: lpg_settings.py; meta-test: lpg_meta_test.py; outputs: lpg_report.py; docs/experiments.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from experiments import command, lpg_meta_test, lpg_report, metacli
from experiments import lpg_settings as S
from experiments.lpg_report import CURRICULUM_CSV, META_STEPS_CSV

resolve = S.resolve  # the settings (experiments.lpg_settings), public here as before


def write_curriculum(
    run_dir, metrics: Mapping, first=1, keep_upto=None, step="generation", name=CURRICULUM_CSV
):
    """DIR/<name> (curriculum.csv, meta_steps.csv): per `step` ("generation" or "meta_step") the
    `metrics` {name: [n]} in name order, after the file's rows up to step `keep_upto` (None: only
    these)."""
    names = sorted(metrics)
    count = len(np.asarray(metrics[names[0]])) if names else 0
    rows = [[first + g, *(float(np.asarray(metrics[k])[g]) for k in names)] for g in range(count)]
    command.write_csv(run_dir / name, [step, *names], rows, keep_upto, exact=True)


def write_meta_steps(run_dir: Path, metrics: Mapping, first: int = 1, keep_upto=None) -> None:
    """meta_steps.csv: the meta-gradient's own metrics per meta-step."""
    write_curriculum(run_dir, metrics, first, keep_upto, "meta_step", META_STEPS_CSV)


def write_mg_metrics(run_dir: Path, metrics: Mapping, curriculum, first=1, keep_upto=None):
    """meta_steps.csv and curriculum.csv (the metrics named in `curriculum`) per meta-step."""
    cur = {k: v for k, v in metrics.items() if k in set(curriculum)}
    write_curriculum(run_dir, cur, first, keep_upto, step="meta_step")
    own = {k: v for k, v in metrics.items() if k not in set(curriculum)}
    write_meta_steps(run_dir, own, first, keep_upto)


def meta_train(plan: metacli.MetaPlan, session: dict, t_start: float):
    """The meta-training of `meta_optimizer` (resumable); returns (the rule, its info)."""
    out = (run_meta_gradient if plan.settings.meta_gradient else run_es)(plan, session, t_start)
    return out.params, out.info


def run_meta_gradient(plan: metacli.MetaPlan, session: dict, t_start: float):
    """Meta-gradient LPG / GROOVE with the curriculum (`groove.make_meta_train`), checkpointed
    in DIR/meta_gradient every `steps_per_call` meta-steps; returns the GrooveOutput."""
    import jax

    from meta import groove

    settings, run_dir = plan.settings, plan.run_dir
    cfg, mg = settings.cfg, settings.cfg.meta_gradient
    meta_train = groove.make_meta_train(cfg)
    calls, clock = [], [time.perf_counter()]  # (meta-steps, seconds) of each call

    def on_steps(done, metrics):
        metacli.write_resumed_config(plan)
        n, now = len(np.asarray(metrics["meta_loss"])), time.perf_counter()
        calls.append((n, now - clock[0]))
        clock[0] = now
        write_mg_metrics(run_dir, metrics, meta_train.curriculum.metrics, done - n + 1, done - n)

    plan.say(
        f"meta-training ({settings.method}): {mg.num_agents} agents on their own "
        f"{cfg.lpg.env} levels (curriculum {cfg.score}), each meta-step {mg.num_agent_updates} "
        f"updates of every agent + one rule update, lives of {settings.train_updates} updates; "
        f"meta-steps {plan.done_generations + 1}..{mg.num_steps} in calls of "
        f"{settings.steps_per_call}; compiling ..."
    )
    out = meta_train(jax.random.key(settings.seed), num_steps=mg.num_steps,
                     steps_per_call=settings.steps_per_call, progress=plan.progress,
                     on_steps=on_steps, checkpoint_dir=run_dir, resume=plan.mode == "resume")  # fmt: skip
    out.info["trained_on"]["meta_gradient"] = dataclasses.asdict(mg)
    if "antagonist_runs" in out.curriculum:
        out.info["trained_on"]["antagonist_runs_uncached"] = out.antagonist_runs_uncached
    metacli.write_resumed_config(plan)
    write_mg_metrics(run_dir, out.metrics, out.curriculum)
    later = calls[1:]
    steps_later, later_s = sum(n for n, _ in later), sum(t for _, t in later)
    session.update(
        meta_steps_run=int(sum(n for n, _ in calls)),
        meta_gradient_first_call_s=calls[0][1] if calls else None,
        meta_gradient_run_s=later_s,
        meta_step_s=(later_s / steps_later) if steps_later else None,
        meta_train_s=time.perf_counter() - t_start,
    )
    return out


def run_es(plan: metacli.MetaPlan, session: dict, t_start: float):
    """ES (ES-GROOVE, ES LPG / TA-LPG) with the curriculum (resumable); returns the
    GrooveOutput."""
    import jax

    from meta import groove

    settings, run_dir, cfg = plan.settings, plan.run_dir, plan.settings.cfg

    def curriculum(metrics, first):
        write_curriculum(run_dir, metrics.get("curriculum", {}), first, keep_upto=first - 1)

    pop, g = cfg.lpg.es.population_size, cfg.lpg.es.num_generations
    plan.say(
        f"meta-training ({settings.method}): {pop} rules x one {settings.train_updates}-update "
        f"agent lifetime each on {pop // 2} {cfg.lpg.env} level(s) per generation (curriculum "
        f"{cfg.score}), generations {plan.done_generations + 1}..{g}, population over "
        f"{plan.es_devices} device(s); compiling the generation ..."
    )
    out = groove.make_meta_train(cfg)(
        jax.random.key(settings.seed), devices=plan.devices[: plan.es_devices],
        progress=plan.progress, checkpoint_dir=run_dir / "es", resume=plan.mode == "resume",
        on_generations=metacli.on_generations(plan, curriculum),
    )  # fmt: skip
    write_curriculum(run_dir, out.curriculum)
    metacli.end_es(plan, session, out.es, int(cfg.lpg.inner.total_timesteps), t_start)
    return out


def experiment(prog: str = "experiments.lpg", curriculum: str = "dr") -> metacli.Experiment:
    """This command's `metacli.Experiment`, with its default curriculum."""
    return metacli.Experiment(
        prog=prog,
        artifact="rule",
        library="meta.lpg",
        resolve=functools.partial(S.resolve, curriculum=curriculum),
        run_name=S.run_name,
        meta_train=meta_train,
        plot_training=lpg_report.plot_training,
        meta_test=lpg_meta_test.meta_test,
        plot_meta_test=lpg_report.plot_meta_test,
        format_table=lpg_report.format_table,
        summary_of=lpg_report.summary_of,
        schedule=S.schedule,
    )


# (subfolder, label, settings) of the TA comparison's runs: the TA paper's TA-LPG (ES) against
# LPG (ES: the same meta-optimiser, so the pair isolates the time-awareness) and the ablation
# TA-LPG (meta-gradient: the paper reports that meta-gradients over K updates fail to learn
# lifetime-dependent rules).
COMPARE_TA = (
    ("ta-lpg-es", "TA-LPG (ES)", {"time_aware": True, "meta_optimizer": "es"}),
    ("ta-lpg-mg", "TA-LPG (meta-gradient)", {"time_aware": True, "meta_optimizer": "meta_gradient"}),
    ("lpg-es", "LPG (ES)", {"time_aware": False, "meta_optimizer": "es"}),
)  # fmt: skip


@dataclasses.dataclass
class ComparePlan(command.Plan):
    """--compare-ta: the plans of its runs [(name, label, plan)] and how to rerun it."""

    arms: list = dataclasses.field(default_factory=list)
    rerun: str = ""


def _arm_plan(args, arm_dir: Path, arm: Mapping, exp: metacli.Experiment) -> metacli.MetaPlan:
    """One run of the comparison: a new run in `arm_dir`, or a --resume of the run there
    (refused when --config and the overrides now give other settings)."""
    ns = {**vars(args), "time_aware": False, "meta_optimizer": None}
    if not (arm_dir / "config.yaml").is_file():
        return metacli.plan(argparse.Namespace(**{**ns, "out": str(arm_dir)}), exp, arm)
    saved = exp.resolve(command.read_run_config(arm_dir, "--compare-ta")).values
    given = exp.resolve(command.merge(command.settings(args), dict(arm))).values
    try:
        command.check_unchanged(saved, given, (), "--compare-ta")
    except ValueError as e:
        raise ValueError(
            f"{e} ({arm_dir} holds a run of other settings; give another --out)"
        ) from None
    ns.update(resume=str(arm_dir), config=None, out=None)
    return metacli.plan(argparse.Namespace(**ns), exp, arm)


def compare_plan(args, exp: metacli.Experiment) -> ComparePlan:
    """--compare-ta: every run's settings checked before any starts."""
    if args.resume or args.meta_test_only or args.time_aware or args.meta_optimizer:
        raise ValueError(
            "--compare-ta sets time_aware and meta_optimizer per run: it takes neither "
            "--time-aware, --meta-optimizer, --resume nor --meta-test-only (rerun the same "
            "command to continue a comparison)"
        )
    out = command.new_run_dir(args.out, "compare-ta", markers=())
    arms = [(name, label, _arm_plan(args, out / name, arm, exp)) for name, label, arm in COMPARE_TA]
    config = f"--config {args.config} " if args.config else ""
    rerun = f"--compare-ta {config}{' '.join(args.overrides)} --out".replace("  ", " ")
    return ComparePlan(out, "compare", not args.no_progress, arms=arms, rerun=rerun)


def compare_execute(plan: ComparePlan) -> dict:
    """The runs one after another (a finished one kept), then DIR/comparison.json, .txt, .png."""
    lpg_meta_test.MEMO = {}
    try:
        for _, label, arm in plan.arms:
            plan.say(f"== {label}: {arm.run_dir}")
            if arm.done:
                plan.say(arm.done)
                continue
            print(metacli.report(arm, metacli.execute(arm)))
    finally:
        lpg_meta_test.MEMO = None
    table = lpg_report.comparison(plan.run_dir, [(name, label) for name, label, _ in plan.arms])
    command.write_json(plan.run_dir / "comparison.json", table)
    command.write_text(plan.run_dir / "comparison.txt", lpg_report.format_comparison(table) + "\n")
    lpg_report.plot_comparison(plan.run_dir, table)
    return table


def _plan(args, prog: str, curriculum: str):
    exp = experiment(prog, curriculum)
    if args.compare_ta:
        return compare_plan(args, exp)
    return metacli.plan(
        args, exp, {"meta_optimizer": args.meta_optimizer} if args.meta_optimizer else {}
    )


def _report(plan, summary: dict) -> str:
    if isinstance(plan, ComparePlan):
        return f"{lpg_report.format_comparison(summary)}\ncomparison folder: {plan.run_dir}"
    return metacli.report(plan, summary)


def _arguments(p) -> None:
    metacli.arguments(p, "TA-LPG (sets time_aware: true; meta-optimiser default es)", "rule")
    p.add_argument("--meta-optimizer", choices=("meta_gradient", "es"),
                   help="sets meta_optimizer (default meta_gradient; es with --time-aware)")  # fmt: skip
    p.add_argument("--compare-ta", action="store_true",
                   help="run ES TA-LPG, meta-gradient TA-LPG and ES LPG into subfolders of --out "
                   "and write one comparison table (rerun the same command to continue it)")  # fmt: skip


def command_for(prog: str = "experiments.lpg", curriculum: str = "dr") -> command.Command:
    """The command (experiments.groove: prog "experiments.groove", curriculum "regret")."""
    return command.Command(
        prog=prog,
        description=(
            "Meta-train an LPG / TA-LPG rule on random grid worlds with meta-gradients (LPG, "
            f"GROOVE) or ES (TA-LPG, ES-GROOVE) (curriculum default {curriculum}), then "
            "meta-test it against A2C and PPO tuned per task; writes a run folder."
        ),
        plan=lambda args: _plan(args, prog, curriculum),
        execute=lambda p: compare_execute(p) if isinstance(p, ComparePlan) else metacli.execute(p),
        report=_report,
        arguments=_arguments,
        describe=lambda args: metacli.describe(args, S.ES_DEFAULTS, S.describer(curriculum)),
        epilog="Settings, methods, run folder and files: docs/experiments.md, section "
        "experiments.lpg.",
        shards=True,
        continue_with=lambda p: p.rerun if isinstance(p, ComparePlan) else metacli.continue_with(p),
    )


COMMAND = command_for()


def main(argv=None) -> int:
    return command.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
