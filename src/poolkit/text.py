"""Plain-text tables for the command line: columns aligned, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["align_columns"]


def align_columns(rows: Sequence[Sequence[str]], *, right: bool = False) -> list[str]:
    """``rows`` (equal lengths) as text lines with every column padded to its widest cell.

    With ``right=True`` the columns after the first are right-aligned (numbers); trailing spaces are dropped.

    Example:
        >>> align_columns([["pool", "ms"], ["max", "1.5"], ["tmaxavg", "12.25"]], right=True)
        ['pool        ms', 'max      1.5', 'tmaxavg  12.25']
    """
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if right and i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
