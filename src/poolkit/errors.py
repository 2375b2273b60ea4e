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

from pathlib import Path

__all__ = ["DataNotFoundError", "DownloadError", "UserError", "is_user_error"]


class UserError(ValueError):
    """A bad input the user can fix (option, config file, data directory); the message names the problem
    and the fix. :func:`poolkit.cli.main` prints it without a traceback and returns 2."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset file or folder is missing or cannot be read; the message names the path and what belongs
    there."""


class DownloadError(UserError, ConnectionError):
    """A dataset download failed (no network, HTTP error); the message says how to get the data by hand."""


_PACKAGE = Path(__file__).resolve().parent


def is_user_error(exc: BaseException) -> bool:
    """Whether a command should report ``exc`` as one line (exit 2) rather than with its traceback.

    A :class:`UserError` always is. A plain ``ValueError`` is when poolkit's own code raised it: by the
    library's convention (as torch's) poolkit raises ``ValueError`` only for a bad argument, with a message
    that names it. A ``ValueError`` raised inside torch, NumPy or another package is an internal error
    (poolkit passed something wrong on): its traceback is kept.

    Example:
        >>> is_user_error(UserError("bad"))
        True
        >>> try:
        ...     int("x")
        ... except ValueError as exc:
        ...     is_user_error(exc)   # raised by Python itself, not by poolkit's checks
        False
    """
    if isinstance(exc, UserError):
        return True
    if not isinstance(exc, ValueError) or exc.__traceback__ is None:
        return False
    frame = exc.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    origin = Path(frame.tb_frame.f_code.co_filename).resolve()
    return origin.parent == _PACKAGE or _PACKAGE in origin.parents
