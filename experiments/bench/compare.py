"""`--compare REV`: the commit REV (in a temporary git worktree) against the working tree, their
`worker.py` runs alternated; per config each side's best SPS and compile seconds, new / old ratios
and whether the final returns agree."""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from experiments.bench.agents import config_spec, runnable
from experiments.bench.timing import show

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("worker.py")
HEADER = (
    f"{'env':24s} {'what':10s} {'old SPS':>10s} {'new SPS':>10s} {'x old SPS':>10s}"
    f" {'(pairs)':>8s} {'old comp s':>10s} {'new comp s':>10s} {'x old comp':>10s}  final return"
)
ROW = (
    "{env:24s} {what:10s} {old_sps:>10,.0f} {sps:>10,.0f} {x_old_sps:>10.3f}"
    " {x_old_sps_median_of_pairs:>8.3f} {old_compile_s:>10.1f} {compile_s:>10.1f}"
    " {x_old_compile:>10.3f}  {same}"
)


def git(*args: str, repo: pathlib.Path = REPO_ROOT, check: bool = True) -> str:
    """The output of `git -C repo *args`; a RuntimeError when it fails and `check`."""
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@contextlib.contextmanager
def old_worktree(rev: str, repo: pathlib.Path = REPO_ROOT):
    """Yields (tree, commit): a detached `git worktree` of `rev` in a temporary folder, both
    removed on exit (also on an exception or KeyboardInterrupt)."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", repo=repo)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        tree = pathlib.Path(tmp) / "old"
        try:
            git("worktree", "add", "--detach", "--quiet", str(tree), commit, repo=repo)
            yield tree, commit
        finally:
            git("worktree", "remove", "--force", str(tree), repo=repo, check=False)
            git("worktree", "prune", repo=repo, check=False)


def alternation(repeats: int) -> list[str]:
    """The order of the worker runs: old, new, old, new, ... `repeats` of each."""
    return [side for _ in range(repeats) for side in ("old", "new")]


def run_worker(tree: pathlib.Path, spec: dict) -> dict:
    """The JSON line of `worker.py SPEC` run on `tree`'s packages (cwd and PYTHONPATH = tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-P", str(WORKER), json.dumps(spec)]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bench worker failed in {tree} on {spec}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_imports(trees: dict) -> dict:
    """{side: file its worker imported purejaxrl.ppo from}; stops unless it is under its tree
    (the venv's editable install points at this checkout)."""
    found = {}
    for side, tree in trees.items():
        found[side] = pathlib.Path(
            run_worker(tree, {"module": "ppo", "probe": True})["module_file"]
        )
        if not found[side].resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"the {side} worker imported {found[side]}, not from {tree}")
    return found


def best_of(runs: list[dict]) -> dict:
    """{sps, compile_s, final_return} of one side: its best SPS and compile seconds."""
    sps, compile_s = max(r["sps"] for r in runs), min(r["compile_s"] for r in runs)
    return {"sps": sps, "compile_s": compile_s, "final_return": runs[-1]["final_return"]}


def compare_row(trees: dict, spec: dict, repeats: int) -> dict:
    """The new-vs-old fields of one config's row, from `repeats` alternated runs of each side."""
    runs = [{"side": side, **run_worker(trees[side], spec)} for side in alternation(repeats)]
    old, new = best_of(runs[0::2]), best_of(runs[1::2])
    # Each (old, new) pair ran adjacent in time: their ratios' median is robust to drifting load.
    pairs = [n["sps"] / o["sps"] for o, n in zip(runs[0::2], runs[1::2], strict=True)]
    return {**new, "old_sps": old["sps"], "old_compile_s": old["compile_s"],
            "old_final_return": old["final_return"], "x_old_sps": new["sps"] / old["sps"],
            "x_old_sps_median_of_pairs": float(np.median(pairs)),
            "x_old_compile": new["compile_s"] / old["compile_s"],
            # Same seed and config: equal returns hint that the change is bit-equal.
            "same_final_return": new["final_return"] == old["final_return"],
            "runs": runs}  # fmt: skip


def run(args) -> tuple[list[dict], dict]:
    """The rows of new-tree vs old-tree timings, and {"compare": {rev, commit}}."""
    rows = []
    with old_worktree(args.compare) as (old_tree, commit):
        trees = {"old": old_tree, "new": REPO_ROOT}
        check_imports(trees)
        print(f"old: {args.compare} = {commit[:12]} (worktree {old_tree}); new: {REPO_ROOT}")
        print(HEADER, flush=True)
        sizes = (args.num_envs, args.total_timesteps, args.sac_timesteps)
        for env_id in args.envs:
            for algo in runnable(env_id, args.algos, 10):
                spec = config_spec(algo, env_id, *sizes) | {
                    "seeds": args.seeds,
                    "calls": args.calls,
                }
                row = {"env": env_id, "what": algo, **compare_row(trees, spec, args.repeats)}
                show(ROW, {**row, "same": "same" if row["same_final_return"] else "differs"})
                rows.append(row)
    return rows, {"compare": {"rev": args.compare, "commit": commit}}
