"""Errors a user can cause and fix: the ``poolkit`` command prints them as one line and exits with status 2.

Every other exception is a bug (or the machine failing) and keeps its traceback. A user error is a
``ValueError`` (the convention of the whole library for a bad argument), so code that catches
``ValueError`` keeps working; the data errors are also the ``OSError`` that they replace, so code that
catches ``FileNotFoundError`` or ``ConnectionError`` keeps working too.

Example:
    >>> try:
    ...     raise DataNotFoundError("/data/train not found: expected root/train/<class>/<image>")
    ... except FileNotFoundError as exc:
    ...     isinstance(exc, UserError), str(exc)
    (True, '/data/train not found: expected root/train/<class>/<image>')
"""

from __future__ import annotations

__all__ = ["DataNotFoundError", "DownloadError", "UserError"]


class UserError(ValueError):
    """A bad input the user can fix (option, config file, data directory); the message names the problem
    and the fix. :func:`poolkit.cli.main` prints it without a traceback and returns 2."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset file or folder is missing or cannot be read; the message names the path and what belongs
    there."""


class DownloadError(UserError, ConnectionError):
    """A dataset download failed (no network, HTTP error); the message says how to get the data by hand."""
