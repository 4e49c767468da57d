"""`parity sweep`: a matrix of checks or benches as Ray tasks, resumable and fault-tolerant.

``SweepSpec`` (the axes, and the user's own ``UserPair``s) expands into ``SweepCell``s with a stable hash; ``run_sweep``
runs them on a local or remote Ray cluster and writes one JSON per cell. Ray is imported
only when a sweep runs (the optional extra ``.[ray]``).
"""

from parity.sweep.matrix import SweepCell, SweepSpec, load_sweep_file
from parity.sweep.pairs import UserPair
from parity.sweep.runner import SweepReport, run_sweep
from parity.sweep.summary import format_summary

__all__ = ["SweepCell", "SweepReport", "SweepSpec", "UserPair", "format_summary", "load_sweep_file", "run_sweep"]
