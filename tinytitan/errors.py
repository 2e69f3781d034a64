"""The one error type for user mistakes, and the entry-point wrapper that reports it.

A bad config key, a missing file or a corrupt shard is the user's to fix: it is printed as one
line naming what was wrong and what was expected, and the process exits with status 2. Bugs are
any other exception and keep their tracebacks.
"""

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2
QUOTED_ERROR_LIMIT = 300  # characters of another library's error quoted inside ours (one_line)


def one_line(text: object, limit: int | None = None) -> str:
    """`text` with its whitespace runs (newlines included) as single spaces, cut to `limit`
    characters with an ellipsis: how another library's long error is quoted inside ours."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


class UserError(Exception):
    """Something the user gave (config, path, data, checkpoint) is wrong; the message says what."""


FULL_DISK_BYTES = 1 << 20  # free space under which a failed write is put down to a full disk

# Why a place the user chose cannot be written (a full disk, a read-only mount, a file in the way):
# theirs to fix, so one line rather than a traceback.
_FILESYSTEM_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "not a folder (a file is in the way)",
    errno.EEXIST: "already exists (a file where a folder was to be made?)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or folder",
}


def filesystem_error(error: BaseException, path: str | Path | None = None) -> UserError | None:
    """A UserError naming the path, when `error` is an OSError of the reasons above, or wraps one
    (DCP's CheckpointException holds each rank's, `raise ... from` its cause), and it names its path
    or `path` is given; or when `path`'s file system is full (torch.save reports a failed write as a
    RuntimeError); else None: a bug, which keeps its traceback."""
    if isinstance(error, OSError) and error.errno in _FILESYSTEM_REASONS and (error.filename or path):
        return UserError(f"{error.filename or path}: {_FILESYSTEM_REASONS[error.errno]}")
    wrapped = [failure[0] for failure in getattr(error, "failures", {}).values()]  # CheckpointException's ranks
    for inner in [*wrapped, error.__cause__]:
        found = inner is not None and filesystem_error(inner, path)
        if found:
            return found
    if path is not None and _free_bytes(path) < FULL_DISK_BYTES:
        return UserError(f"{path}: {_FILESYSTEM_REASONS[errno.ENOSPC]}")
    return None


def _free_bytes(path: str | Path) -> float:
    try:
        stats = os.statvfs(path)
    except OSError:
        return float("inf")  # nothing known: not put down to a full disk
    return stats.f_bavail * stats.f_frsize


def run_entry_point(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run `main(argv)`, turning a UserError (or a path that cannot be written) into one line on
    stderr and exit status 2."""
    try:
        status = main(sys.argv[1:] if argv is None else argv)
    except BaseException as exception:  # DCP's CheckpointException is not an Exception
        error = exception if isinstance(exception, UserError) else filesystem_error(exception)
        if error is None:
            raise
        # One line, whatever the message held, in one write: the ranks of a run share stderr, and
        # run_train.sh tells their common message once.
        sys.stderr.write(f"error: {one_line(error)}\n")
        sys.stderr.flush()
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.exit(status or 0)
