"""An agent's progress_fn that shows a tqdm bar and feeds logging sinks (purejaxrl.sinks):
`agent = ppo.make_agent(cfg, progress_fn=p.callback)`, then `p.start(agent.num_updates, 0, "ppo",
logs=sinks.make_sinks(...))` before training and `p.close()` after."""

from __future__ import annotations

import sys

from purejaxrl import sinks


class Bar:
    """A sink (sinks.Sink) on a tqdm bar: the update, env steps per seed and the mean return of
    the seeds that finished an episode ("return -" before any has)."""

    name = "progress bar"

    def __init__(self, total: int, initial: int, desc: str):
        from tqdm.auto import tqdm

        self.tqdm = tqdm(
            total=total, initial=initial, desc=desc, unit="upd", mininterval=0.5, dynamic_ncols=True
        )

    def log(self, step: int, scalars, prefix=None) -> None:
        update = int(scalars[f"{sinks.NAMESPACE}/update"])
        if update > self.tqdm.n:
            self.tqdm.update(update - self.tqdm.n)
        ret = scalars.get(f"{sinks.NAMESPACE}/episode_return")
        shown = "-" if ret is None else f"{ret:.2f}"
        self.tqdm.set_postfix_str(f"env steps {step:,} | return {shown}", refresh=False)

    def close(self) -> None:
        self.tqdm.close()


class Progress:
    """An agent's progress_fn: a `sinks.Reporter` over the bar (when enabled) and the logging
    sinks given to `start`. With neither, `callback` is None and no host callback is compiled."""

    def __init__(self, enabled: bool = True, logging: bool = False):
        self.enabled, self.logging = enabled, logging
        self.bar: Bar | None = None
        self.reporter = sinks.Reporter([])

    def start(self, total, initial, desc, *, logs=(), **reporter) -> None:
        """Shows the bar from update `initial` of `total` and feeds it and `logs` from now on;
        `reporter`: num_seeds, started (sinks.Reporter)."""
        self.bar = Bar(total, initial, desc) if self.enabled else None
        shown = [self.bar] if self.bar else []
        self.reporter = sinks.Reporter([*shown, *logs], on_error=self.notice, **reporter)

    def __call__(self, update_step, metrics) -> None:
        self.reporter(update_step, metrics)

    @property
    def callback(self):
        return self if self.enabled or self.logging else None

    def notice(self, message: str) -> None:
        """One line on stderr even when disabled (above the bar while it runs)."""
        if self.bar is not None:
            self.bar.tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Logs the last collected reports and closes the bar (not the logging sinks)."""
        self.reporter.flush()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
