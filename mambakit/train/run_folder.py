"""The run folder (out_dir) of a training run: one run at a time, and nothing written before the run is accepted.

`lock_run_folder` takes an exclusive `flock` on the folder itself, so a refused run writes nothing there, not even a
lock file, and the kernel releases the lock when the process ends, however it ends (a `kill -9` leaves nothing
stuck). Only an accepted run writes: `write_run_files` (the CLI's run_config.json) and `RunFolderLock.record_owner`
(the pid a second run names when it is refused).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger(__name__)

#: The pid of the run holding the folder, written once the run is accepted and removed when it ends.
OWNER_NAME = ".mambakit-run.pid"


class RunFolderLock:
    """This process's exclusive hold on a run folder (no hold where the filesystem has no locks)."""

    def __init__(self, out_dir: Path, fd: int | None, created: bool) -> None:
        self.out_dir, self.fd = out_dir, fd
        self.created = created  # taking the lock made the folder: a refused run removes it again
        self.accepted = False

    def record_owner(self) -> None:
        """The run was accepted: write this process's pid where a refused second run reads it."""
        self.accepted = True
        write_run_files(self.out_dir, {OWNER_NAME: f"{os.getpid()}\n"})

    def release(self) -> None:
        """Remove the pid record (or the folder a refused run created) and let another run take the folder."""
        if self.accepted:
            (self.out_dir / OWNER_NAME).unlink(missing_ok=True)
        elif self.created:
            with contextlib.suppress(OSError):  # not empty: another run (on a filesystem without locks) uses it
                self.out_dir.rmdir()  # nothing is written before a run is accepted
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def lock_run_folder(out_dir: Path, create: bool) -> RunFolderLock:
    """Lock `out_dir` for this process, creating it first when `create` (a fresh run). A path that is a file or lies
    under one, a folder that cannot be created or written, and a folder another run holds are one-line UserErrors;
    a missing folder with `create` False is left for the caller to refuse (returned unlocked)."""
    _check_location(out_dir)
    created = False
    if not out_dir.exists():
        if not create:
            return RunFolderLock(out_dir, None, created)
        try:
            out_dir.mkdir(parents=True)
            created = True
        except FileExistsError:
            pass  # another run made it meanwhile: the lock decides
        except OSError as error:
            raise UserError(
                f"cannot create the run folder {out_dir} ({error.strerror}); choose another out_dir (--out)"
            ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserError(
            f"{out_dir} is not writable (permission denied); fix its permissions or choose another out_dir (--out)"
        )
    try:
        import fcntl
    except ImportError:  # not POSIX: Windows is not a target, so it trains without the lock
        return RunFolderLock(out_dir, None, created)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # the folder is another run's: leave it, even one made a moment ago
        raise UserError(
            f"{out_dir} is in use by another mambakit run{_owner(out_dir)}; wait for it or choose another "
            f"out_dir (--out)"
        ) from None
    except OSError as error:  # a filesystem without flock (some network mounts)
        os.close(fd)
        logger.warning("%s: cannot lock the run folder (%s); make sure no other run uses it", out_dir, error.strerror)
        return RunFolderLock(out_dir, None, created)
    return RunFolderLock(out_dir, fd, created)


def write_run_files(out_dir: Path, files: Mapping[str, bytes | str]) -> None:
    """Replace each file in `out_dir` atomically (a crash leaves the old or the new content, never a torn one)."""
    for name, content in files.items():
        target = out_dir / name
        tmp = target.with_name(f".{name}.tmp")
        with open(tmp, "wb") as file:
            file.write(content.encode() if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)


def _check_location(out_dir: Path) -> None:
    """A one-line UserError when `out_dir` is a file or lies under one."""
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out_dir else f"is under {path}, a file"
                raise UserError(f"{out_dir} {where}, not a run folder; choose another out_dir (--out)")
            return


def _owner(out_dir: Path) -> str:
    """' (pid N)' from the holder's record, or '' while it has not written one yet (a record a killed run left
    names a process that is gone)."""
    try:
        pid = int((out_dir / OWNER_NAME).read_text())
        if pid <= 0:  # not a pid we wrote: kill(0) would test our own process group
            return ""
        os.kill(pid, 0)  # is it alive? (PermissionError: yes, another user's)
    except PermissionError:
        pass
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})"
