"""The report's HTML page: :class:`poolkit.report.document.Document` rendered as one self-contained
page (figures embedded as base64 PNG, inline CSS, no script and no external reference of any kind)."""

from __future__ import annotations

import base64
import html
import re

from poolkit.report.document import Bullets, Document, Heading, Image, Paragraph, Table

__all__ = ["render_html"]


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def _inline_html(text: str) -> str:
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        if match.group(1) is not None:
            out.append(f"<strong>{_inline_html(match.group(1))}</strong>")
        else:
            out.append(f"<code>{html.escape(match.group(2))}</code>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0 auto;
       max-width: 1500px; padding: 1.5em 2em 4em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 2em; }
h3 { margin-top: 1.6em; }
.scroll { overflow-x: auto; margin: .8em 0 1.2em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d0d0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; position: sticky; top: 0; }
tr:nth-child(even) td { background: #f8f9fb; }
td:first-child { white-space: nowrap; font-weight: 500; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { font-size: 14px; color: #444; margin-top: .4em; max-width: 1100px; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; font-size: 90%; }
nav ul { columns: 2; font-size: 14px; }
"""


def render_html(doc: Document) -> str:
    """``doc`` as one self-contained HTML page: inline CSS, figures as ``data:`` URIs, no scripts, no links
    out; level-2 headings make a contents list.

    Example:
        >>> from poolkit.report.document import Paragraph
        >>> page = render_html(Document("Title", [Paragraph("**Bold**")]))
        >>> "<p><strong>Bold</strong></p>" in page
        True
    """
    toc = [b for b in doc.blocks if isinstance(b, Heading) and b.level == 2]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    if toc:
        items = "".join(f'<li><a href="#{_anchor(h.text)}">{_inline_html(h.text)}</a></li>' for h in toc)
        parts.append(f"<nav><strong>Contents</strong><ul>{items}</ul></nav>")
    for block in doc.blocks:
        if isinstance(block, Heading):
            parts.append(
                f'<h{block.level} id="{_anchor(block.text)}">{_inline_html(block.text)}</h{block.level}>'
            )
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in block.rows
            )
            parts.append(
                f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>"
            )
        elif isinstance(block, Image):
            encoded = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(block.title)}">'
                f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
