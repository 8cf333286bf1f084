"""One live process per run directory: a ``run.lock`` file holding the owner's PID.

The lock is an exclusive ``flock`` on ``<run>/run.lock``; the file also records the owner's
PID and host so that a refusal can say who holds it. The kernel drops the ``flock`` when its
process dies (even by ``kill -9``), so a lock file left by a dead process is stale and the next
runner takes it over. POSIX only (``fcntl``).

:func:`exit_on_signals` turns SIGTERM/SIGHUP into ``SystemExit`` so that ``finally`` blocks run
(locks released, child processes stopped) when a run or a bench is told to stop.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

from hardneg.errors import UserError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "exit_on_signals", "lock_holder"]

LOCK_NAME = "run.lock"


class RunLockedError(UserError):
    """The run directory is locked by another live process."""


def _recorded_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lock_holder(directory: str | os.PathLike) -> int | None:
    """PID of the live process holding ``directory``'s lock (-1 if it has not recorded its PID
    yet), or None when the lock is free or stale."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _recorded_pid(path) or -1
    finally:
        os.close(fd)  # also drops the probe's shared lock
    return None


class RunLock:
    """Exclusive lock of a run directory (``with RunLock(dir): ...`` or acquire/release).

    Args:
        directory: the run directory (created if missing).

    Raises:
        RunLockedError: on :meth:`acquire`, when a live process holds the lock; the message
            names the directory and the holder's PID.

    Example:
        >>> import tempfile
        >>> with RunLock(tempfile.mkdtemp()) as lock:
        ...     lock.released
        False
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def released(self) -> bool:
        """True when this object does not hold the lock."""
        return self._fd is None

    def acquire(self) -> RunLock:
        """Take the lock (a stale lock file of a dead process is taken over); returns self."""
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = _recorded_pid(self.path)
                who = f"running process {pid}" if pid else "a running process"
                raise RunLockedError(
                    f"run directory {self.directory} is locked by {who} ({self.path}); wait for "
                    "it or stop it, or use another output directory"
                ) from None
            try:  # the holder we waited for may have removed the file: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@contextmanager
def exit_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP),
) -> Iterator[list[int]]:
    """Within the block, the first of ``signals`` raises ``SystemExit(128 + signum)`` (the
    shell's exit status for a signal) in the main thread; later ones are only recorded, so
    that cleanup is not interrupted. Yields the list of received signal numbers.

    Outside the main thread (where handlers cannot be set) the block runs unchanged.
    """
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
