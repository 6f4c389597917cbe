"""Pure measurement of artifacts: metric, size, latency, peak memory and energy.

Nothing here knows a technique; everything here is measured on the artifact as loaded
from disk, in a fresh process, so what the search sees is what a user would ship.
"""

from autoslim.measure.runner import OBJECTIVE_NAMES, measure_artifact, measure_in_subprocess

__all__ = ["OBJECTIVE_NAMES", "measure_artifact", "measure_in_subprocess"]
