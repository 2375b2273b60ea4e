"""The report as a document: an ordered list of blocks (headings, paragraphs, bullets, tables, figures)
and its Markdown rendering. :mod:`poolkit.report.htmlpage` renders the same blocks as one HTML page.

Example:
    >>> doc = Document("Title")
    >>> doc.add(Heading(2, "Results"), Paragraph("**Bold** and `code`."))
    >>> print(doc.to_markdown(Path(".")), end="")
    # Title
    <BLANKLINE>
    ## Results
    <BLANKLINE>
    **Bold** and `code`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Bullets", "Document", "Heading", "Image", "Paragraph", "Table"]


@dataclass
class Heading:
    """A section heading (level 2 and 3 are used; level 2 headings make the HTML's contents list)."""

    level: int
    text: str


@dataclass
class Paragraph:
    """Text with Markdown's ``**bold**`` and ```code``` as its only inline markup."""

    text: str


@dataclass
class Bullets:
    """A bullet list; items take the same inline markup as :class:`Paragraph`."""

    items: list[str]


@dataclass
class Table:
    """A table of text cells (inline markup allowed, ``|`` is escaped in Markdown)."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    """A PNG figure with its caption: linked from report.md, embedded in report.html."""

    path: Path
    title: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image


@dataclass
class Document:
    """An ordered list of blocks with a title."""

    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def table(self, rows: tuple[list[str], list[list[str]]]) -> None:
        header, body = rows
        if body:
            self.add(Table(header, body))

    def to_markdown(self, base: Path) -> str:
        """Markdown with figures linked relative to ``base`` (the directory report.md is written to)."""
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                lines += ["#" * block.level + " " + block.text, ""]
            elif isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):

                def row(cells: list[str]) -> str:
                    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

                lines += [row(block.header), "|" + "|".join(" --- " for _ in block.header) + "|"]
                lines += [row(r) for r in block.rows] + [""]
            elif isinstance(block, Image):
                rel = os.path.relpath(block.path, base).replace(os.sep, "/")
                lines += [f"![{block.title}]({rel})", "", f"*{block.caption}*", ""]
        return "\n".join(lines).rstrip() + "\n"
