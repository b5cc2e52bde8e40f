"""One run owns a workdir: DIR/owner.json names it (pid, host, since when) while it runs.

Two launches of the same command on one workdir would both train and both write checkpoints and
metrics. The first to create DIR/owner.json (atomically: O_CREAT | O_EXCL) owns the workdir; a
second is refused with the owner named. An owner that is gone (its process no longer runs on
this host: a kill -9, a crash) is taken over with a warning; one on another host cannot be
checked from here, and is refused with how to take over. A multi-process job has one owner:
process 0, which claims before any process writes.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time

from absl import logging

OWNER_FILE = "owner.json"


class WorkdirBusyError(ValueError):
    """Another run owns the workdir."""


def _alive(pid: int) -> bool:
    """Whether a Python process with this pid runs on this host."""
    if pid <= 0:  # os.kill would signal a process group.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return True  # No /proc to tell: believe the pid.
    return not command or b"python" in command  # Empty while a new process starts.


def _describe(owner: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return f"pid {owner.get('pid')} on {owner.get('host')} since {since}"


def claim(workdir: str) -> str:
    """Makes this process the owner of `workdir`; returns the owner file's path. Raises
    WorkdirBusyError naming the owner if a live run owns it."""
    path = os.path.join(workdir, OWNER_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):  # Once more after taking over from a run that is gone.
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner is None:
                continue  # Removed (or half-written and removed) meanwhile: try again.
            if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                _remove(path)  # This process's own claim, from a run it made before.
                continue
            if owner.get("host") != me["host"]:
                raise WorkdirBusyError(
                    f"workdir {workdir} is in use by {_describe(owner)}; if that run is gone, "
                    f"remove {path} and run again") from None
            if _alive(int(owner.get("pid", -1))):
                raise WorkdirBusyError(f"workdir {workdir} is in use by {_describe(owner)}; "
                                       "use another --workdir or wait for it") from None
            logging.warning("workdir %s was owned by %s, which has ended; taking it over",
                            workdir, _describe(owner))
            _remove(path)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return path
    raise WorkdirBusyError(f"workdir {workdir}: cannot claim {path}; another run is starting "
                           "there at the same time")


def release(path: str) -> None:
    """Gives the workdir up, if this process still owns it."""
    owner = _read(path)
    if owner is not None and owner.get("pid") == os.getpid() and (
            owner.get("host") == socket.gethostname()):
        _remove(path)


def _read(path: str) -> dict | None:
    """The owner file's contents; None if there is none. A file that does not parse is being
    written by a run that claimed a moment ago: read again for up to a second, then it is
    one left half-written by a run killed while writing it (an owner that is gone)."""
    for _ in range(10):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.1)
    return {"pid": -1, "host": socket.gethostname(), "since": 0}


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def check_writable(workdir: str) -> None:
    """Creates DIR and DIR/checkpoints, or refuses a path that is a file or cannot be written,
    before any work is done that could not be saved."""
    for path in (workdir, os.path.join(workdir, "checkpoints")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{path} is a file, not a directory; use another --workdir")
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise ValueError(f"cannot write to {path}: {error.strerror or error}") from error
