"""The report's rendering: one list of blocks rendered as Markdown and as self-contained HTML, so the two cannot
drift apart, and its publication beside the results' Parquet."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from opengrok_dagster.publish import publishing


REPORT_MARKDOWN, REPORT_HTML = "report.md", "report.html"  # in the layout's reports_dir


def _escape_pipe(value):
    return value.replace("|", "\\|") if isinstance(value, str) else value


def _escaped_pipes(table: pd.DataFrame) -> pd.DataFrame:
    """A '|' in a cell (a partition key, a post) would split a Markdown table's column: escape it."""
    return table.map(_escape_pipe).rename(columns=_escape_pipe)


@dataclass
class Report:
    blocks: list[tuple[str, object]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def add(self, kind: str, content) -> None:
        self.blocks.append((kind, content))

    def markdown(self) -> str:
        parts = []
        for kind, content in self.blocks:
            if kind in ("h1", "h2", "h3"):
                parts.append(f"{'#' * int(kind[1])} {content}")
            elif kind == "p":
                parts.append(content)
            elif kind == "list":
                parts.append("\n".join(f"- {item}" for item in content))
            elif kind == "table":
                parts.append(_escaped_pipes(content).to_markdown(index=False) if len(content) else "_(none)_")
            elif kind == "image":
                parts.append(f"![{content}]({content})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = []
        for kind, content in self.blocks:
            if kind in ("h1", "h2", "h3"):
                body.append(f"<{kind}>{html.escape(content)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(content)}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in content) + "</ul>")
            elif kind == "table":
                body.append(
                    content.to_html(index=False, escape=True, border=0) if len(content) else "<p><em>(none)</em></p>"
                )
            elif kind == "image":
                data = base64.b64encode(self.images[content]).decode()
                body.append(f'<img alt="{html.escape(content)}" src="data:image/png;base64,{data}">')
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}img{max-width:100%}"
        )
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>OpenGrok evaluation report</title><style>{style}</style></head><body>\n'
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def publish_report(report_dir: Path, report: Report, frame: pd.DataFrame) -> dict[str, Path]:
    """Write report.md, report.html, the plots and results.parquet; each file appears whole or not at all."""
    report_dir = Path(report_dir)
    files = {
        "markdown": REPORT_MARKDOWN,
        "html": REPORT_HTML,
        "parquet": "results.parquet",
        **{name: name for name in report.images},
    }
    published = {key: report_dir / name for key, name in files.items()}
    with publishing(*published.values()) as partials:
        partial = dict(zip(published, partials))
        partial["markdown"].write_text(report.markdown(), encoding="utf-8")
        partial["html"].write_text(report.html(), encoding="utf-8")
        frame.to_parquet(partial["parquet"], index=False)
        for name, data in report.images.items():
            partial[name].write_bytes(data)
    return published
