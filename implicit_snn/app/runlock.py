"""The run directory's lock: one ``train`` at a time owns a folder, for the whole run."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError
from .rundir import RunDir


class RunDirInUse(UsageError):
    """Another ``train`` holds the run directory's lock; the message names it."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner_text(owner: dict[str, Any]) -> str:
    return f"process {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"


class RunLock:
    """The exclusive right to train in a run directory, held for the whole run.

    The lock is ``RunDir.LOCK`` in the folder: an ``flock`` on it, which the kernel gives to one
    open file at a time (the check and the taking are one step) and releases when its process
    ends, however it ends; the file holds the owner's process id, host and start time, so that a
    refused ``train`` can name it. A lock file that nobody holds was left by a process that ended
    without removing it (SIGKILL, a crash): it is taken over, and ``warning`` says so. Release
    removes the file, and the folders that taking it created if they are still empty (a run
    refused before it wrote anything leaves no folder) unless ``keep_folders`` was called.

    Use as a context manager; ``acquire`` raises ``RunDirInUse`` where another process holds it.
    """

    OWNER_WAIT_S = 2.0  # how long a refused process waits for the owner to write its name

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / RunDir.LOCK
        self.warning: Optional[str] = None
        self._fd: Optional[int] = None
        self._created: list[Path] = []

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _make_folders(self) -> None:
        missing = []
        folder = self.folder
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made by a process racing this one: not ours to remove
                continue
            except OSError as error:
                raise UsageError(f"cannot make the run directory {folder}: {error.strerror or error}") from None
            self._created.insert(0, folder)

    def acquire(self) -> None:
        """Take the lock (``warning`` is then set where a stale one was taken over), or raise
        ``RunDirInUse`` naming the process that holds it."""
        self._make_folders()
        for _ in range(100):  # each retry follows a release that raced this acquire
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # a racing process removed the folder it had made
                self._make_folders()
                continue
            except OSError as error:
                self._remove_created()
                raise UsageError(f"cannot take the lock {self.path}: {error.strerror or error}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._remove_created()
                raise RunDirInUse(f"{self.folder} is in use by another training run ({self._owner()}); wait for it "
                                  f"to end or stop it, or pass --out for another directory") from None
            except OSError as error:  # a filesystem without locks: train, but say what is not guarded
                self.warning = (f"cannot lock {self.path} ({error.strerror or error}): a second train into "
                                f"{self.folder} would not be refused")
                self._own(fd, locked=False)
                return
            # Locked, but the file may have been removed (released) between our open and flock.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._own(fd, locked=True)
            return
        raise UsageError(f"cannot take the lock {self.path}: it keeps being removed and made again")

    def _own(self, fd: int, *, locked: bool) -> None:
        if locked:
            left = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if left:  # nobody holds the lock, yet its file names an owner: one that did not remove it
                try:
                    who = _owner_text(json.loads(left))
                except (json.JSONDecodeError, AttributeError):
                    who = "an unreadable owner"
                self.warning = (f"{self.path} was left by {who}, which ended without removing it (killed?); "
                                "taking the run directory over")
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "implicit-snn train"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def _owner(self) -> str:
        """Who holds the lock, from its file; the holder may be writing it this very moment."""
        deadline = time.monotonic() + self.OWNER_WAIT_S
        while True:
            try:
                owner = json.loads(self.path.read_text(encoding="utf-8"))
                # A stale owner's name, not yet overwritten by the new holder, is not the holder.
                if isinstance(owner, dict) and (owner.get("host") != socket.gethostname()
                                                or _process_alive(int(owner["pid"]))):
                    return f"{_owner_text(owner)}; its lock is {self.path}"
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                return f"its lock {self.path} names no owner yet"
            time.sleep(0.02)

    def release(self) -> None:
        """Remove the lock file and let it go; then the folders taking it made, if still empty."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                # Removed while still held, so that no one takes the file that is going away.
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(fd)
        self._remove_created()

    def keep_folders(self) -> None:
        """Keep the folders taking the lock made, even empty (the run has begun to write there)."""
        self._created = []

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty: a run's files, or another process's lock
                break
        self._created = []
