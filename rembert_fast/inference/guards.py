"""What keeps a batch output sound across runs: an exclusive lock on the output, and the record of the
settings a `.partial` output was written with, which `--resume` must match.

    lock = OutputLock(path)          # raises OutputInUse naming the holder's pid
    write_settings(path, settings)   # before the first byte of path.partial
    check_settings(path, settings)   # on resume: raises ResumeError naming each difference
    lock.release()
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ResumeError(ValueError):
    """A partial output that cannot be continued (not written by this command, or other settings)."""


class OutputInUse(RuntimeError):
    """Another process holds the lock on this output."""


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def settings_path(path: Path) -> Path:
    return path.with_name(path.name + ".settings.json")


class OutputLock:
    """An exclusive `flock` on `<path>.lock`, which holds the holder's pid; released by `release()` or
    by the holder's death (the kernel drops the lock), so a killed run never blocks the next one."""

    def __init__(self, path: str | Path) -> None:
        self.output, self.path = Path(path), lock_path(Path(path))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputInUse(
                    f"output {str(self.output)!r} is being written by another run (pid {holder}, lock file "
                    f"{str(self.path)!r}): wait for it to finish, or write another output"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: no other run has locked this file
            os.close(self._fd)
            self._fd = None


def write_settings(path: Path, settings: Mapping[str, Any]) -> None:
    """Write `settings` to `<path>.settings.json` atomically and durably (before `path.partial` exists)."""
    target = settings_path(path)
    temporary = target.with_name(target.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(dict(settings), f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def check_settings(path: Path, partial: Path, settings: Mapping[str, Any]) -> None:
    """Raise ResumeError unless `<path>.settings.json` holds `settings`, naming every difference."""
    target = settings_path(path)
    try:
        recorded = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"cannot resume: {str(partial)!r} has no record of the settings it was written "
                          f"with ({str(target)!r} is missing): run without --resume to start over") from None
    except (OSError, ValueError) as error:
        raise ResumeError(f"cannot resume: cannot read {str(target)!r}: {error}") from None
    expected = json.loads(json.dumps(dict(settings)))  # as it would read back: tuples become lists
    if not isinstance(recorded, dict):
        recorded = {}
    differences = [
        f"{key} was {recorded.get(key)!r}, now {expected.get(key)!r}"
        for key in sorted(set(recorded) | set(expected))
        if recorded.get(key) != expected.get(key)
    ]
    if differences:
        raise ResumeError(f"cannot resume: {str(partial)!r} was written with other settings: "
                          f"{'; '.join(differences)}. Rerun with the same settings, or without --resume to "
                          "start over")
