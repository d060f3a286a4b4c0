"""One report document, two renderings: Markdown (plots as files) and self-contained HTML.

The sections build a list of blocks; both renderers walk the same list, so the numbers in the
Markdown and the HTML cannot disagree. The HTML embeds every plot as a base64 PNG and loads
nothing from outside (no scripts, fonts or stylesheets): one file a user can mail or archive.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Para:
    text: str
    """Plain text with ``**bold**`` and ```code``` spans."""
    kind: str = "p"
    """"p", "note" (a quieter aside), "good", "bad" or "unknown" (a verdict box)."""


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None
    highlight: set[int] = field(default_factory=set)
    """Row indices to emphasise (the sweep's best trial)."""
    reference: set[int] = field(default_factory=set)
    """Row indices that are published numbers, not ours."""


@dataclass
class Image:
    name: str
    """File name under ``plots/`` (``.png``)."""
    png: bytes
    alt: str
    caption: str | None = None


@dataclass
class Details:
    """A collapsed block of preformatted text (the full config)."""

    summary: str
    text: str
    language: str = ""


Block = Heading | Para | Bullets | Table | Image | Details


# ---- Markdown ---------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            prefix = {"note": "> ", "good": "> ✅ ", "bad": "> ❌ ", "unknown": "> ❔ "}.get(
                block.kind, ""
            )
            out += [prefix + block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"*{block.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            for i, row in enumerate(block.rows):
                cells = [_md_cell(c) for c in row]
                if i in block.highlight:
                    cells = [f"**{c}**" if c else c for c in cells]
                elif i in block.reference:
                    cells[0] = f"*{cells[0]}*"
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        elif isinstance(block, Image):
            out += [f"![{block.alt}](plots/{block.name})", ""]
            if block.caption:
                out += [f"*{block.caption}*", ""]
        elif isinstance(block, Details):
            out += [
                f"<details><summary>{html.escape(block.summary)}</summary>",
                "",
                f"```{block.language}",
                block.text.rstrip("\n"),
                "```",
                "",
                "</details>",
                "",
            ]
    return "\n".join(out).rstrip("\n") + "\n"


# ---- HTML -------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; vertical-align: top; }
th { background: #f3f5f7; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
tr.best td { background: #fff4c2; font-weight: 600; }
tr.ref td { background: #f1f3f6; color: #57606a; font-style: italic; }
caption { caption-side: top; text-align: left; color: #57606a; font-size: 13px; padding-bottom: 4px; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; border: 1px solid #e4e7eb; }
figcaption { color: #57606a; font-size: 13px; }
.note { color: #57606a; font-size: 14px; border-left: 3px solid #d0d7de; padding-left: .8em; }
.verdict { padding: .8em 1em; border-radius: 6px; font-size: 17px; margin: .8em 0; }
.good { background: #dafbe1; border: 1px solid #4ac26b; }
.bad { background: #ffebe9; border: 1px solid #ff8182; }
.unknown { background: #fff8c5; border: 1px solid #d4a72c; }
.icon { font-weight: 700; font-size: 22px; margin-right: .3em; }
.good .icon { color: #1a7f37; } .bad .icon { color: #cf222e; } .unknown .icon { color: #9a6700; }
code { background: #f3f5f7; padding: 0 3px; border-radius: 3px; font-size: 90%; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
details { margin: .6em 0 1.2em; }
summary { cursor: pointer; font-weight: 600; }
nav { font-size: 14px; }
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(title: str, blocks: list[Block]) -> str:
    body: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    toc = [b for b in blocks if isinstance(b, Heading) and b.level == 2 and b.anchor]
    if toc:
        body.append(
            "<nav>"
            + " · ".join(f'<a href="#{b.anchor}">{html.escape(b.text)}</a>' for b in toc)
            + "</nav>"
        )
    for block in blocks:
        if isinstance(block, Heading):
            anchor = f' id="{block.anchor}"' if block.anchor else ""
            body.append(f"<h{block.level}{anchor}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            if block.kind in ("good", "bad", "unknown"):
                # Plain dingbats, not emoji: they render with the fonts every system has.
                icon = {"good": "✔", "bad": "✘", "unknown": "?"}[block.kind]
                body.append(
                    f'<div class="verdict {block.kind}"><span class="icon">{icon}</span> '
                    f"{_inline(block.text)}</div>"
                )
            else:
                css = ' class="note"' if block.kind == "note" else ""
                body.append(f"<p{css}>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            parts = ["<table>"]
            if block.caption:
                parts.append(f"<caption>{_inline(block.caption)}</caption>")
            parts.append(
                "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.headers) + "</tr>"
            )
            for i, row in enumerate(block.rows):
                css = (
                    ' class="best"'
                    if i in block.highlight
                    else (' class="ref"' if i in block.reference else "")
                )
                parts.append(
                    f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                )
            parts.append("</table>")
            body.append("".join(parts))
        elif isinstance(block, Image):
            caption = f"<figcaption>{_inline(block.caption)}</figcaption>" if block.caption else ""
            body.append(
                f'<figure><img src="{png_data_uri(block.png)}" alt="{html.escape(block.alt)}">'
                f"{caption}</figure>"
            )
        elif isinstance(block, Details):
            body.append(
                f"<details><summary>{html.escape(block.summary)}</summary>"
                f"<pre>{html.escape(block.text)}</pre></details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
