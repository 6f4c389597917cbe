"""Where a study's trials run: the interface every runner implements.

The driver (:func:`autoslim.searching.driver.search`) opens the study, measures the
baseline and recovers what a killed run left; a runner then runs the remaining budget,
recording each outcome through :mod:`autoslim.searching.study`. Runners know that
module and this one, never each other, so an optional runner (Ray) is imported only
when it is asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import optuna

from autoslim.searching.evaluate import SearchContext


class Runner(ABC):
    """Runs trials of a study until its budget (``ctx.experiment.search``) is spent or
    its timeout passes. The study is the only state: a runner stopped at any point
    leaves nothing that a re-run of the search does not pick up."""

    @abstractmethod
    def run(self, study: optuna.Study, ctx: SearchContext, *, progress: bool) -> None:
        """Run the study's remaining budget, with a progress bar if ``progress``."""

    def close(self) -> None:  # noqa: B027 — optional: most runners hold nothing
        """Release what the runner holds (called once, after :meth:`run` or instead of it)."""
