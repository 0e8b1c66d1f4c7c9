"""Fast ``ddpm`` runs: ``ddpm.cli.main(argv)`` in a process forked from a server that has already imported torch and
ddpm (``multiprocessing``'s forkserver), so an attempt costs its own work, not the 3 s of CPU that importing torch
takes. It is the code path of ``python -m ddpm`` (``raise SystemExit(main())``) minus the interpreter's start-up: an
uncaught exception prints its traceback on stderr and exits 1, as Python does. Attempts that kill or time whole runs
use real ``python -m ddpm`` processes instead (:mod:`.scenarios`); ``--no-fork`` makes every attempt one.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path

from .core import MEMORY_LIMIT, Run, _text

PRELOAD = ["torch", "numpy", "PIL.Image", "ddpm", "ddpm.cli", "ddpm.pipeline", "ddpm.training", "ddpm.evaluation",
           "benchmarks.campaign.api_probe"]  # fmt: skip
_context = None


def context():
    """The forkserver context, started on first use with the heavy modules preloaded."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


def _child(argv, cwd: str, env: dict, user: int | None, out: str, err: str, usage: str, api: bool = False) -> None:
    import resource
    import sys
    import traceback

    os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if user is not None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(handle, fd)
        os.close(handle)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    code = 1
    try:
        if api:  # an API probe: ``argv`` is its code
            from benchmarks.campaign.api_probe import main as probe

            code = probe(argv)
        else:
            from ddpm.cli import main

            code = main(list(argv))
    except SystemExit as exc:  # argparse, and `raise SystemExit(main())`'s own convention
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            r = resource.getrusage(resource.RUSAGE_SELF)
            c = resource.getrusage(resource.RUSAGE_CHILDREN)
            Path(usage).write_text(str(r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime))
        except OSError:
            pass
    os._exit(int(code or 0) & 0xFF)


def run_forked(argv, cwd: Path, timeout: float, env: dict, user: int | None = None, api: bool = False) -> Run:
    """Run ``ddpm ARGV`` in a forked child (see the module docstring); the same :class:`Run` as a real process.
    ``api``: ``argv`` is the code of an API probe (:mod:`.api_probe`) instead."""
    ctx = context()
    with tempfile.TemporaryDirectory(prefix="fork-", dir=cwd.parent) as tmp:
        out, err, usage = (str(Path(tmp) / n) for n in ("out", "err", "usage"))
        os.chmod(tmp, 0o777)
        start = time.monotonic()
        proc = ctx.Process(target=_child, args=(argv, str(cwd), env, user, out, err, usage, api), daemon=False)
        proc.start()
        proc.join(timeout)
        timed_out = proc.exitcode is None
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.join(30)
        else:
            try:  # whatever it left running in its session (data-loader workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        seconds = time.monotonic() - start
        read = lambda p: _text(Path(p).read_bytes()) if Path(p).is_file() else ""  # noqa: E731
        try:
            cpu = float(read(usage) or 0.0)
        except ValueError:
            cpu = 0.0
        return Run(proc.exitcode, read(out), read(err), seconds, timed_out, cpu, forked=True)
