"""Files written whole or not at all: a temporary file beside the target, renamed over it.

A full disk, a killed process or an exception while writing leaves the old file as it was (or
no file) and no temporary file behind, never a half-written one (np.load's BadZipFile, a
config.json cut short).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """A file object to write `path`'s new contents into ("w" text, utf-8, or "wb"); `path`
    changes only when the block ends without an exception, with the permissions a plain open
    would give it. An OSError names `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                                                 suffix=".tmp", dir=directory)
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):  # Name the file: a full disk's message does not.
            raise OSError(f"cannot write {path}: {error.strerror or error}") from error
        raise
