"""The campaign's machinery: what an attempt is, how one is run in its own folder, and how its outcome is classified.

Outcomes (docs/hardening.md, "How outcomes are classified"):

* ``ok``: a clean success (exit 0 and every checked property holds), or a clean error (exit 1 or 2, a message on
  stderr, no Python traceback) for an attempt that expected one (or either);
* ``traceback``: "Traceback (most recent call last)" on stderr (an API attempt: an exception other than
  ValueError/TypeError/OSError, or one raised inside torch/numpy instead of by ddpm or the caller);
* ``silent-wrong``: exit 0 where an error was expected, or a checked property of the result fails (a wrong image
  count, a non-finite number printed, NaN weights saved, stale export, a bad value accepted without a word);
* ``lost-work``: after a kill and a rerun the result differs from an uninterrupted run, work restarted from zero
  where it should have resumed, or the work was done and then thrown away by an error that could have come first;
* ``refused``: a valid request (expect ``ok``) that ended in a clean error;
* ``timeout``: the attempt's time limit ran out;
* ``crash``: death by a signal (segfault, abort) or an exit code other than 0, 1, 2 (and 130/143 after SIGINT/TERM).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

OUTCOMES = ("ok", "traceback", "silent-wrong", "lost-work", "refused", "timeout", "crash")
FAILURES = OUTCOMES[1:]
TRACEBACK = "Traceback (most recent call last)"
#: A non-finite number printed as a result ("FID nan", "bits/dim inf"), not a word such as "inference".
_NON_FINITE = re.compile(r"(?<![\w.])[-+]?(nan|inf|infinity)(?![\w])", re.IGNORECASE)
REPO_ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@dataclass
class Run:
    """One process run: exit code (negative: killed by that signal), output, wall time."""

    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    cpu: float = 0.0
    forked: bool = False  # run by the fork server (no interpreter start-up in ``cpu``)


@dataclass
class Attempt:
    """One attempt of the campaign.

    ``cmd`` is the argument list after ``ddpm`` (kind ``cli``), Python code (kind ``api``) or a whole command line
    (kind ``argv``; ``{python}`` is this interpreter); ``{name}`` placeholders
    are filled from the fixtures' paths and ``{work}`` (the attempt's own folder). ``expect`` is ``error`` (a clean
    error is the only right answer), ``ok`` (must succeed and pass ``check``) or ``either``. ``setup(work, fx)``
    prepares files; ``check(work, fx, run)`` returns None when a successful run's result is right, else the evidence.
    ``custom(work, fx)`` runs the whole attempt itself (kills, reruns) and returns ``(outcome, evidence)``.
    """

    id: str
    cls: str
    issue: str
    cmd: list[str] | str
    expect: str
    what: str
    kind: str = "cli"
    timeout: float = 90.0
    setup: Callable | None = None
    check: Callable | None = None
    custom: Callable | None = None
    exclusive: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    def command_text(self) -> str:
        if self.kind == "api":
            return "python: " + " ".join(str(self.cmd).split())
        if self.kind == "custom":
            return str(self.cmd)
        if self.kind == "argv":
            return " ".join(_quote(a) for a in self.cmd)
        return "ddpm " + " ".join(_quote(a) for a in self.cmd)


def _quote(arg: str) -> str:
    return arg if arg and re.fullmatch(r"[\w@%+=:,./{}-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def child_env(work: Path | None = None) -> dict[str, str]:
    """The environment of every child: one thread, the repository's code first, a private data cache."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if work is not None:
        env["DDPM_CACHE"] = str(work / ".cache")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def ddpm_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "ddpm", *args]


def run_process(argv: list[str], cwd: Path, timeout: float, env: dict | None = None, user: int | None = None) -> Run:
    """Run ``argv`` to its end (or ``timeout``), in its own process group so a timeout kills its children too.
    ``Run.cpu`` is the child's own CPU time (user + system), which the machine's load does not inflate."""
    proc = start_process(argv, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user)
    return finish_process(proc, timeout)


def finish_process(proc: subprocess.Popen, timeout: float, started: float | None = None) -> Run:
    """Wait for ``proc`` (started with both pipes) up to ``timeout`` s, collecting its output and CPU time."""
    start = started if started is not None else time.monotonic()
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}
    readers = [
        threading.Thread(target=_drain, args=(stream, chunks[key]), daemon=True)
        for key, stream in (("out", proc.stdout), ("err", proc.stderr))
        if stream is not None
    ]
    for r in readers:
        r.start()
    timed_out, cpu, status = False, 0.0, None
    while status is None:
        pid, raw, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, cpu = raw, usage.ru_utime + usage.ru_stime
            break
        if time.monotonic() - start > timeout:
            timed_out = True
            kill_group(proc)
            _, status, usage = os.wait4(proc.pid, 0)
            cpu = usage.ru_utime + usage.ru_stime
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    kill_group(proc)  # anything it left behind in its group
    for r in readers:
        r.join(timeout=5)
    out, err = b"".join(chunks["out"]), b"".join(chunks["err"])
    return Run(proc.returncode, _text(out), _text(err), time.monotonic() - start, timed_out, cpu)


def _drain(stream, sink: list[bytes]) -> None:
    for block in iter(lambda: stream.read1(65536), b""):
        sink.append(block)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a running process, from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


#: Run ``cli`` attempts in processes forked from a preloaded server (:mod:`.forkrun`); False: real processes.
USE_FORK = True


def run_cli(args: list[str], cwd: Path, timeout: float, env: dict | None = None, user: int | None = None) -> Run:
    """``ddpm ARGS`` in ``cwd``: forked from the preloaded server when :data:`USE_FORK`, else a real process."""
    env = env or child_env(cwd)
    if USE_FORK and user is None:  # another user cannot read this interpreter's stdlib under /root: a real process
        from .forkrun import run_forked

        return run_forked(args, cwd, timeout, env, user)
    return run_process(ddpm_argv(args), cwd, timeout, env=env, user=user)


def start_process(argv: list[str], cwd: Path, env: dict | None = None, user: int | None = None, **kw):
    """Start ``argv`` in its own process group, as user id ``user`` when given (root only: read-only folders are
    read-only to that user), stdout and stderr piped unless given."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    if user is not None:  # setpriv: the exec path through root's interpreter stays resolvable, the files do not
        if shutil.which("setpriv"):
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        else:
            kw["user"], kw["group"], kw["extra_groups"] = user, user, []
    return subprocess.Popen(
        argv, cwd=cwd, env=env or child_env(cwd), stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=_limit_memory, **kw,
    )  # fmt: skip


#: Address-space limit of every child, so that an attempt asking for an impossible size fails instead of pushing a
#: shared machine into swap.
MEMORY_LIMIT = 8 * 2**30


def _limit_memory() -> None:  # runs in the child, maybe as `nobody`, who cannot import from root's stdlib
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def warned(stderr: str) -> bool:
    """Whether stderr holds a warning other than an option's deprecation notice (issue #17: old spellings such as
    ``--quiet`` keep working with a one-line notice, which says nothing about the run)."""
    return any("warn" in ln.lower() and "deprecat" not in ln.lower() for ln in stderr.splitlines())


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def traceback_evidence(stderr: str) -> str:
    """The exception line of the last traceback in ``stderr``."""
    return last_line(stderr.split(TRACEBACK)[-1]) or "Traceback"


def classify(attempt: Attempt, run: Run, work: Path, fx) -> tuple[str, str]:
    """(outcome, one line of evidence) of a ``cli`` attempt's run."""
    if run.timed_out:
        return "timeout", f"no answer within {attempt.timeout:.0f} s"
    if run.rc is not None and run.rc < 0:
        return "crash", f"killed by signal {-run.rc} ({_signame(-run.rc)})"
    if TRACEBACK in run.stderr:
        return "traceback", traceback_evidence(run.stderr)
    if run.rc == 0:
        if attempt.expect == "error":
            return "silent-wrong", "exit 0 for a bad request: " + (last_line(run.stdout) or last_line(run.stderr))
        match = _NON_FINITE.search(run.stdout)
        if match:
            return "silent-wrong", "non-finite number printed: " + last_line(run.stdout)
        if attempt.check is not None:
            problem = attempt.check(work, fx, run)
            if problem:
                return problem if isinstance(problem, tuple) else ("silent-wrong", problem)
        return "ok", "exit 0" + (f": {last_line(run.stdout)}" if run.stdout.strip() else "")
    if run.rc in (1, 2):
        message = last_line(run.stderr)
        if not message:
            return "silent-wrong", f"exit {run.rc} without any message"
        if attempt.expect == "ok":
            return "refused", f"exit {run.rc}: {message}"
        if attempt.check is not None and "error-check" in attempt.tags:
            problem = attempt.check(work, fx, run)
            if problem:
                return problem if isinstance(problem, tuple) else ("lost-work", problem)
        return "ok", f"exit {run.rc}: {message}"
    return "crash", f"exit code {run.rc}: {last_line(run.stderr)}"


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "?"


def classify_api(attempt: Attempt, run: Run) -> tuple[str, str]:
    """(outcome, evidence) of an ``api`` attempt: the probe prints one JSON line describing what happened."""
    if run.timed_out:
        return "timeout", f"no answer within {attempt.timeout:.0f} s"
    if run.rc is not None and run.rc < 0:
        return "crash", f"killed by signal {-run.rc} ({_signame(-run.rc)})"
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return "crash", f"the probe printed no verdict (exit {run.rc}): {last_line(run.stderr)}"
    verdict = json.loads(lines[-1])
    if verdict.get("failed_check"):
        return "silent-wrong", verdict["failed_check"]
    exc = verdict.get("exception")
    if exc is None:
        if attempt.expect == "error":
            return "silent-wrong", "no error for a bad call" + (f": {verdict['note']}" if verdict.get("note") else "")
        return "ok", "returned" + (f": {verdict['note']}" if verdict.get("note") else "")
    text = f"{exc}: {verdict.get('message', '')}"[:300]
    if verdict.get("clean"):
        return ("refused", text) if attempt.expect == "ok" else ("ok", text)
    where = str(verdict.get("where"))
    where = where.split("/site-packages/")[-1] if "/site-packages/" in where else where.split("/src/")[-1]
    return "traceback", f"{text} (raised in {where})"


@dataclass
class Record:
    id: str
    cls: str
    issue: str
    command: str
    expect: str
    what: str
    outcome: str
    evidence: str
    seconds: float
    cpu: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_attempt(attempt: Attempt, fx, root: Path, keep: bool = False) -> Record:
    """Run one attempt in a fresh folder under ``root`` and classify it."""
    work = Path(tempfile.mkdtemp(prefix=attempt.id.replace("/", "_") + "-", dir=root))
    start = time.monotonic()
    run = None
    try:
        if attempt.setup is not None:
            attempt.setup(work, fx)
        if attempt.custom is not None:
            outcome, evidence = attempt.custom(work, fx)
        elif attempt.kind == "api":
            code = fx.fill(str(attempt.cmd), work)
            if USE_FORK:
                from .forkrun import run_forked

                run = run_forked(code, work, attempt.timeout, child_env(work), api=True)
            else:
                argv = [sys.executable, "-m", "benchmarks.campaign.api_probe", code]
                run = run_process(argv, work, attempt.timeout)
            outcome, evidence = classify_api(attempt, run)
        elif attempt.kind == "argv":  # any command line (the harness's own tests use it); {python}: this Python
            argv = [sys.executable if a == "{python}" else fx.fill(a, work) for a in attempt.cmd]
            run = run_process(argv, work, attempt.timeout)
            outcome, evidence = classify(attempt, run, work, fx)
        else:
            args = [fx.fill(a, work) for a in attempt.cmd]
            user = None
            if "nobody" in attempt.tags and os.geteuid() == 0:  # root writes anywhere: run as nobody instead
                user = NOBODY
                work.chmod(0o777)
            env = child_env(work)
            env["HOME"] = str(work)
            run = run_cli(args, work, attempt.timeout, env=env, user=user)
            outcome, evidence = classify(attempt, run, work, fx)
    except Exception as err:  # the harness's own failure: report it, never hide it as a pass
        outcome, evidence = "crash", f"harness error: {type(err).__name__}: {err}"
    finally:
        if not keep:
            _remove(work)
    seconds = time.monotonic() - start
    root_dir = str(getattr(fx, "root", "")) or None
    evidence_text = " ".join(str(evidence).split())
    if root_dir:  # the campaign's temporary folder says nothing: $CAMPAIGN
        evidence_text = evidence_text.replace(root_dir, "$CAMPAIGN")
    evidence_text = evidence_text[:400]
    return Record(
        attempt.id, attempt.cls, attempt.issue, attempt.command_text(), attempt.expect, attempt.what,
        outcome, evidence_text, round(seconds, 1), round(run.cpu, 1) if run is not None else 0.0,
    )  # fmt: skip


def _remove(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        try:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
