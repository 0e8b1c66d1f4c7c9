"""How many CPU threads torch should use: the commands' ``--threads`` default.

torch's own default is one intra-op thread per core. Its OpenMP threads meet at a barrier after every parallel
operator, so when another process keeps a core busy, each barrier waits for a thread that the kernel has descheduled:
on a 2-core machine with one other busy process, sampling and training were measured 25-30x slower with torch's
default than with one thread (``docs/benchmarks.md``, "Threads on a busy machine"). The default here counts the
cores other processes keep busy at start-up and leaves them alone:

    threads = max(1, usable cores - busy cores)

where the usable cores are this process's CPU affinity and the busy cores are measured from ``/proc/stat`` over a
short window (on systems without ``/proc/stat``: the 1-minute load average). An explicit ``--threads N`` is used as
given, up to :data:`MAX_THREADS_PER_CORE` times the usable cores (more only oversubscribes; far more crashes torch).

This module does not import torch at import time.
"""

from __future__ import annotations

import os
import time

#: ``--threads`` above this many per usable core is refused (torch segfaults at e.g. 100,000 threads).
MAX_THREADS_PER_CORE = 4

#: Seconds over which the other processes' CPU use is measured.
SAMPLE_WINDOW_S = 0.1


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The largest ``--threads`` accepted."""
    return MAX_THREADS_PER_CORE * usable_cores()


def _cpu_times() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies of all cores from ``/proc/stat``, or None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def busy_cores(window_s: float = SAMPLE_WINDOW_S) -> float:
    """How many cores other processes keep busy now (this process is assumed idle while it measures)."""
    first = _cpu_times()
    if first is not None:
        time.sleep(window_s)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            share = (second[0] - first[0]) / (second[1] - first[1])
            return share * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(busy: float | None = None) -> int:
    """The default thread count: the usable cores that other processes leave idle, at least one.

    ``busy``: the busy cores (default: measured now with :func:`busy_cores`). A core counts as busy from half a
    core's load up (``round``), so a brief blip from a shell does not cost a thread.
    """
    cores = usable_cores()
    if busy is None:
        busy = busy_cores()
    return max(1, min(cores, cores - round(busy)))


def check_threads(threads: int | None) -> str | None:
    """An error message for a bad ``--threads`` value, else None."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        return f"--threads must be a whole number, got {threads!r}"
    if threads < 1:
        return f"--threads must be >= 1, got {threads}"
    if threads > max_threads():
        return (
            f"--threads must be at most {max_threads()} ({MAX_THREADS_PER_CORE} per usable core on this machine), "
            f"got {threads}"
        )
    return None


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`auto_threads`); returns the number set.

    The environment variables ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, where set, count as an explicit choice and
    are left to torch.
    """
    import torch

    message = check_threads(threads)
    if message is not None:
        raise ValueError(message)
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
            return torch.get_num_threads()
        threads = auto_threads()
    torch.set_num_threads(threads)
    return threads
