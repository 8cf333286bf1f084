"""The one line between a user's mistake and a bug.

:class:`UserError` is a problem with what the user gave — a config key or value, a data or model
spec, a file, a path — that the user fixes; its message names the culprit and the fix. The
``hardneg`` command prints it on one line (``hardneg: error: …``) and exits 2. Any other
exception is an internal error: the command lets it through with its full traceback.

Input checks that run before any work (config resolution and validation, data and model specs)
raise plain ``ValueError``/``FileNotFoundError`` as library functions should;
:func:`user_errors` marks such a phase, turning them into :class:`UserError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "user_errors"]


class UserError(ValueError):
    """A mistake in the user's config, data, paths or specs (a ``ValueError``: code that
    catches ``ValueError`` keeps working)."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Within the block, a ``ValueError``, ``KeyError`` or ``OSError`` (a missing, unreadable
    or unwritable file) is the user's: it is re-raised as :class:`UserError` with the same
    message, on one line.

    Example:
        >>> try:
        ...     with user_errors():
        ...         raise KeyError("no column 'caption' in data.csv")
        ... except UserError as err:
        ...     print(err)
        no column 'caption' in data.csv
    """
    try:
        yield
    except UserError:
        raise
    except (ValueError, KeyError, OSError) as err:
        raise UserError(one_line(err)) from err


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (a ``KeyError``'s without the quotes its ``str`` adds; an
    ``OSError``'s with its file name)."""
    if isinstance(err, KeyError) and err.args:
        message = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror and err.filename:
        message = f"{err.strerror}: {err.filename}"
    else:
        message = str(err)
    return " ".join(message.split())
