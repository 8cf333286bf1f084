"""Atomic file writes: nothing half-written is ever left under the final name.

A write goes to a hidden temp file ``.<name>.<host>-<pid>.<random>.tmp`` next to the target,
which is then renamed over it. The temp file is created like ``open()`` creates a file (mode
``0o666`` minus the umask, or the mode of the file it replaces), so shared cache and results
directories stay readable to others. A process killed mid-write leaves its temp file behind;
:func:`remove_stale_temps` removes those of dead writers.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "remove_stale_temps"]

_TEMP = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp names of old versions


def _host() -> str:
    """This machine's name, without dots (temp names are split on them)."""
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new temp file next to ``path`` with ``open()``'s mode (umask applied)."""
    existing = None
    try:
        existing = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    while True:
        tmp = path.parent / f".{path.name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        if existing is not None:  # replacing a file keeps its mode, as writing into it would
            os.fchmod(fd, existing)
        return fd, tmp


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it.

    If ``write`` raises (or the process dies), ``path`` keeps its previous content (or stays
    absent) and the temp file is removed (or left as a hidden ``.<name>.<host>-<pid>.*.tmp``,
    which :func:`remove_stale_temps` recognises). A new file gets mode ``0o666 & ~umask``
    like ``open()``; a replaced file keeps its mode.

    Args:
        path: the final file.
        write: callback that writes the content to the open binary file it receives.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "x.txt", lambda f: f.write(b"hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, locked: bool = False) -> list[Path]:
    """Remove the temp files :func:`atomic_write` left in ``directory`` when its writer died.

    Only names of the form ``atomic_write`` creates are touched. By default a temp file is
    stale when it was written by a process of this host that no longer runs; temp files of
    live processes, of other hosts and of older versions (no PID in the name) are kept.

    Args:
        directory: the directory to clean (a missing one is fine).
        locked: the caller holds ``directory``'s lock (e.g. a :class:`RunLock` of a run
            directory), so no one else writes there: every temp file of ours is stale.

    Returns:
        the removed files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    host, me = _host(), os.getpid()
    for path in sorted(directory.iterdir()):
        match = _TEMP.match(path.name)
        if not path.is_file() or (match is None and not _LEGACY_TEMP.match(path.name)):
            continue
        if not locked:
            if match is None or match["host"] != host:
                continue
            pid = int(match["pid"])
            if pid == me or _alive(pid):
                continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
