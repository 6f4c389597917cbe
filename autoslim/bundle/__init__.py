"""Bundles: several Pareto-front points shipped as one artifact, switched at run time.

``autoslim export RUN_DIR --bundle -o DIR`` writes one (:mod:`autoslim.bundle.store`);
:func:`load_bundle` holds every point in memory (:mod:`autoslim.bundle.module`); a
policy picks the point from latency, queue length or power
(:mod:`autoslim.bundle.policies`); :func:`replay` shows what it would have done on a
request trace (:mod:`autoslim.bundle.replay`).
"""

from autoslim.bundle.module import BundleModule, Point, load_bundle
from autoslim.bundle.policies import (
    BudgetLadder,
    LatencyBudget,
    LatencyWindow,
    Manual,
    Policy,
    PowerBudget,
    QueueLength,
    Signals,
)
from autoslim.bundle.replay import (
    FullBatchLoad,
    Trace,
    poisson_arrivals,
    replay,
    sine_rate,
    step_rate,
    top1,
)
from autoslim.bundle.store import Manifest, read_manifest, write_bundle

__all__ = [
    "BudgetLadder",
    "BundleModule",
    "FullBatchLoad",
    "LatencyBudget",
    "LatencyWindow",
    "Manifest",
    "Manual",
    "Point",
    "Policy",
    "PowerBudget",
    "QueueLength",
    "Signals",
    "Trace",
    "load_bundle",
    "poisson_arrivals",
    "read_manifest",
    "replay",
    "sine_rate",
    "step_rate",
    "top1",
    "write_bundle",
]
