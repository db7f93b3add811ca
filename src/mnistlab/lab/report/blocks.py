"""Document blocks rendered two ways: Markdown (report.md, notebook cells) and self-contained HTML.

A section is a title and a list of blocks; a block is one of
    ("p", text)                      a paragraph (Markdown inline: **bold**, `code`)
    ("list", [text, ...])            a bullet list
    ("table", headers, rows)         a table (cells formatted already)
    ("img", path, caption)           a PNG; embedded as base64 in HTML
    ("code", text)                   a preformatted block
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnistlab.tables import md_table

Block = tuple
Section = tuple[str, list[Block]]


def block_md(block: Block, base: Path | None = None) -> str:
    kind = block[0]
    if kind == "p":
        return block[1] + "\n"
    if kind == "list":
        return "".join(f"- {item}\n" for item in block[1])
    if kind == "table":
        return md_table(block[1], block[2])
    if kind == "img":
        path = Path(block[1])
        rel = path.relative_to(base) if base is not None and path.is_relative_to(base) else path
        return f"![{block[2]}]({rel.as_posix()})\n"
    if kind == "code":
        return f"```\n{block[1].rstrip()}\n```\n"
    raise ValueError(f"unknown block kind {kind!r}")


def section_md(section: Section, base: Path | None = None, level: int = 2) -> str:
    title, blocks = section
    return f"{'#' * level} {title}\n\n" + "\n".join(block_md(b, base) for b in blocks)


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


NUMBER = re.compile(r"^[-+]?[\d.,]+(e-?\d+)?(%| pt| MB)?$")


def _td(value: Any) -> str:
    text = str(value)
    return f"<td class='n'>{_inline(text)}</td>" if NUMBER.match(text) else f"<td>{_inline(text)}</td>"


def block_html(block: Block) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{_inline(block[1])}</p>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>"
    if kind == "table":
        head = "".join(f"<th>{_inline(str(h))}</th>" for h in block[1])
        body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block[2])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if kind == "img":
        data = base64.b64encode(Path(block[1]).read_bytes()).decode()
        cap = _inline(block[2])
        img = f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
        return f"<figure>{img}<figcaption>{cap}</figcaption></figure>"
    if kind == "code":
        return f"<pre>{html.escape(block[1].rstrip())}</pre>"
    raise ValueError(f"unknown block kind {kind!r}")


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}img{max-width:min(100%,48rem)}
pre{background:#f6f6f6;padding:.5rem;overflow:auto}
figcaption{font-size:.9em;color:#555}"""


def document_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page: inline CSS, images as data: URIs, no external requests."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for name, blocks in sections:
        parts.append(f"<section><h2>{_inline(name)}</h2>")
        parts += [block_html(b) for b in blocks]
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
