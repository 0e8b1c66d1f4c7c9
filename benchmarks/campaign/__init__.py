"""The hostile-user campaign of issue #15 as a rerunnable harness (protocol and baseline: docs/hardening.md).

``python -m benchmarks.campaign [--only CLASS] [--json OUT]`` runs a table of attempts on the ``ddpm`` command and
API, each in its own temporary folder with tiny models, and classifies each outcome automatically: ``ok``,
``traceback``, ``silent-wrong``, ``lost-work``, ``refused``, ``timeout`` or ``crash`` (:mod:`.core`). The attempts
are generated in :mod:`.table`; the multi-step ones (kills, reruns, interference, caches) are in :mod:`.scenarios`.
"""

from .core import FAILURES, OUTCOMES, Attempt, Record, classify, run_attempt
from .runner import markdown, run_campaign, summarize
from .table import CLASSES, all_attempts

__all__ = [
    "CLASSES",
    "FAILURES",
    "OUTCOMES",
    "Attempt",
    "Record",
    "all_attempts",
    "classify",
    "markdown",
    "run_attempt",
    "run_campaign",
    "summarize",
]
