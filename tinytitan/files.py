"""Writing files and folders so that a reader never sees half of one.

A file is written beside its final name and renamed over it (`os.replace` is atomic on POSIX); a
folder is filled under a temporary name and renamed when complete. A crash or kill therefore
leaves either the old content or the new, never a mixture, and never something that looks done.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tinytitan.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    """Write `data` to `path` through a temporary file renamed over it; `fsync` makes it durable
    before the rename (for data that is expensive to make again)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.filename is None:  # a failed write (a full disk) names no file: name the one it was for
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_json(path: str | Path, value, fsync: bool = False, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n", fsync)


def publish_folder(staging: Path, final: Path) -> None:
    """Rename a complete `staging` folder to `final`, replacing an old `final` only at the end (a
    crash between the two renames leaves the old one under a hidden name, never a partial one)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


@contextlib.contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block succeeds (replacing an old
    `out` only then); removed if it fails, leaving `out` as it was."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        publish_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_output_folder(out: Path, overwrite: bool, *sources: Path) -> None:
    """Refuse an existing output folder (unless `overwrite`), and one that would hold or replace an input."""
    out = out.expanduser().resolve()
    for source in sources:
        source = source.expanduser().resolve()
        if out == source or out in source.parents or source in out.parents:
            raise UserError(f"output folder {out}: must not be, hold or be inside the input {source}")
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out}: exists and is not a folder")


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
