"""Which process runs a trial, and cleaning up after processes that died (kill -9, a crashed machine).

Every trial records its worker (host, PID and the PID's start time, so a reused PID is not mistaken for the
original). On start, a search fails the RUNNING trials whose worker is provably gone (same host, process not
alive) at once, with ``fail_reason = "worker died"``, and removes the scratch folders of dead processes. Trials of
workers on other hosts are failed by Optuna's heartbeat instead.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WORKER_DIED = "worker died"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    # A killed worker whose parent has not collected it yet (a launcher, a test) is a zombie: dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_dead(worker: dict[str, Any] | None) -> bool:
    """True only when ``worker`` ran on this host and that process is gone (or its PID now names another)."""
    if not worker or worker.get("host") != socket.gethostname():
        return False
    pid = int(worker["pid"])
    if not pid_alive(pid):
        return True
    start = _start_time(pid)
    return start is not None and worker.get("start") is not None and start != worker["start"]


def reap_dead_trials(study: Any, on_failed: Any) -> list[int]:
    """Fail the study's RUNNING trials whose worker is provably gone; ``on_failed(trial)`` closes their runs.

    Optuna's heartbeat (``fail_stale_trials``, on in nas.search.study) fails a dead worker's trial only after its
    grace period; on the same host a dead PID is known at once, so this fails it now. Optuna has no public call to
    fail another process's trial, hence the storage's own setters."""
    import optuna

    storage, reaped = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not is_dead(t.user_attrs.get("worker")):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", WORKER_DIED)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        on_failed(t)
        reaped.append(t.number)
    return reaped


def scratch_prefix(worker: dict[str, Any] | None = None) -> str:
    w = worker or this_worker()
    return f".scratch-{w['host']}-{w['pid']}-"


def remove_dead_scratch(workdir: Path) -> list[Path]:
    """Remove scratch folders of this host's dead processes; returns what was removed."""
    host = socket.gethostname()
    removed = []
    for path in workdir.glob(f".scratch-{host}-*-*"):
        pid = path.name.removeprefix(f".scratch-{host}-").split("-", 1)[0]
        if pid.isdigit() and is_dead({"host": host, "pid": int(pid), "start": None}):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def host_lock_path() -> Path:
    """The host lock's file: ``$NAS_HOST_LOCK``, else one per user in the temporary folder. Every ``nas`` process of
    this user (any folder, any venv) serialises its measurements on it; another user's processes do not see it, so
    two users measuring on one machine must share a path through ``NAS_HOST_LOCK`` (docs/workers.md)."""
    env = os.environ.get("NAS_HOST_LOCK")
    if env:
        return Path(env).expanduser()
    user = getpass.getuser().replace(os.sep, "_") or str(os.getuid())
    return Path(tempfile.gettempdir()) / f"nas-host-{user}.lock"


@contextmanager
def host_lock(exclusive: bool, enabled: bool = True) -> Iterator[None]:
    """Host-wide: measuring (exclusive) never overlaps another worker's training or measuring on this machine;
    trainings (shared) run side by side. Two workers on a 2-core VM inflated each other's timings by 40-110%.
    filelock's reader/writer lock: a dead holder's hold ends with its process."""
    if not enabled:
        yield
        return
    from filelock import ReadWriteLock

    path = host_lock_path()
    lock = ReadWriteLock(path)
    with lock.write_lock() if exclusive else lock.read_lock():
        yield
