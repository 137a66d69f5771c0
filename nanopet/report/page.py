"""One self-contained HTML page of captioned figures and tables, readable offline.

``write_page(path, title, header_lines, sections)`` writes ``path`` and, once, ``plotly.min.js``
beside it (taken from the installed plotly package, never from a CDN), so the folder can be copied
into a paper's supporting information and opened with no network.
"""

from __future__ import annotations

import html
from pathlib import Path

PLOTLY_JS = "plotly.min.js"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
.header p { margin: 0.15em 0; color: #444; }
.header p.status { font-weight: bold; color: #222; }
section { margin: 2em 0; border-top: 1px solid #ddd; padding-top: 0.8em; }
section h2 { font-size: 1.15em; margin: 0 0 0.1em 0; }
section p.caption { margin: 0 0 0.5em 0; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
.note { background: #fff6e0; border: 1px solid #e8c878; padding: 0.6em 1em; }
"""


def _plotly_js_source() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_plotly_js(directory: Path) -> Path:
    """Write ``plotly.min.js`` into ``directory`` unless an identical copy is already there."""
    target = Path(directory) / PLOTLY_JS
    source = _plotly_js_source()
    if not target.exists() or target.stat().st_size != len(source.encode("utf-8")):
        target.write_text(source, encoding="utf-8")
    return target


def _section_body(content, index: int) -> str:
    if isinstance(content, str):
        return content
    if hasattr(content, "to_html"):
        return content.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{index}",
                               config={"displaylogo": False, "responsive": True})
    raise TypeError(f"section {index}: expected a plotly Figure or an HTML string, got {type(content).__name__}")


def write_page(path: Path, title: str, header_lines: list[str], sections: list[tuple[str, object]]) -> Path:
    """Write an HTML page: a title, header lines, then sections of (caption, Figure or HTML string).

    A caption may be ``"Heading: one line saying what to read from it"``; the part before the first
    ``": "`` becomes the section heading. Header lines and captions are plain text (escaped); a header
    line starting with ``Status:`` is shown in bold.
    ``plotly.min.js`` is written once beside ``path``; every figure uses it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_plotly_js(path.parent)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>",
             f'<script src="{PLOTLY_JS}"></script>', "</head>", "<body>",
             f'<div class="header"><h1>{html.escape(title)}</h1>']
    parts += [f'<p class="status">{html.escape(line)}</p>' if line.startswith("Status:") else f"<p>{html.escape(line)}</p>"
              for line in header_lines]
    parts.append("</div>")
    for index, (caption, content) in enumerate(sections):
        heading, _, rest = caption.partition(": ")
        parts.append(f'<section id="section-{index}">')
        if rest:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts.append(f'<p class="caption">{html.escape(rest)}</p>')
        else:
            parts.append(f'<p class="caption">{html.escape(caption)}</p>')
        parts.append(_section_body(content, index))
        parts.append("</section>")
    parts += ["</body>", "</html>"]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
