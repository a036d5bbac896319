"""report.html: a self-contained picture of one migration (no network, no script), drawn from report.json alone:
a timeline of the phases and passes to scale with the read-only window and each restart marked, what clients
saw (pushes refused, reads unanswered) on rows of their own, objects and
bytes per phase, the verification and image-proof figures, and the config diff. Operators attach it to the
change ticket."""

from __future__ import annotations

import datetime
import html
from pathlib import Path
from typing import Any, Mapping, Optional

WIDTH = 1000  # timeline drawing width (px)
LABEL = 170  # left column for row labels
ROW = 26
WINDOW_COLOUR = "#f4a261"  # the read-only window: the colour tests look for in a screenshot
RESTART_COLOUR = "#c1121f"
PUSHES_COLOUR = "#9d0208"  # pushes refused: from the read-only restart to the write accepted on s3
READS_COLOUR = "#370617"  # reads unanswered: GET /v2/ without an answer during a restart
PHASE_COLOURS = {"initial_sync": "#2a9d8f", "delta_passes": "#3a86ff", "online_verification": "#8338ec",
                 "readonly_on": "#e76f51", "final_sync": "#e76f51", "verify_window": "#e76f51",
                 "cutover": "#e76f51", "readonly_off": "#e76f51", "reconfigure": "#264653"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.ok { color: #2a9d8f; font-weight: bold; } .bad { color: #c1121f; font-weight: bold; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; }
.legend span { display: inline-block; margin-right: 18px; }
.swatch { display: inline-block; width: 14px; height: 10px; margin-right: 5px; vertical-align: middle; }
"""


def _when(epoch: Optional[float]) -> str:
    return datetime.datetime.fromtimestamp(epoch).isoformat(sep=" ", timespec="seconds") if epoch else "n/a"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def timeline(report: Mapping[str, Any]) -> str:
    """An SVG: one row a phase, passes beneath, the read-only window shaded across, restarts as red bars."""
    phases = [p for p in report.get("phases", []) if p.get("started_at")]
    if not phases:
        return "<p>No timeline: the report has no timed phases.</p>"
    start = min(p["started_at"] for p in phases)
    end = max(p["started_at"] + p["seconds"] for p in phases)
    end = max(end, report.get("readonly_off_at") or end)
    span = max(end - start, 1e-3)

    def x(epoch: float) -> float:
        return LABEL + (epoch - start) / span * WIDTH

    passes = [p for p in report.get("pass_history", []) if p.get("started_at", 0) >= start - 1]
    clients = client_rows(report)
    height = ROW * (len(phases) + 1 + (1 if passes else 0) + len(clients)) + 30
    parts = [f'<svg width="{LABEL + WIDTH + 20}" height="{height}" '
             'role="img" aria-label="timeline of the migration">']
    on, off = report.get("readonly_on_at"), report.get("readonly_off_at")
    if on:
        right = x(off) if off else LABEL + WIDTH
        parts.append(f'<rect class="read-only-window" x="{x(on):.1f}" y="0" width="{max(right - x(on), 2):.1f}" '
                     f'height="{height - 20}" fill="{WINDOW_COLOUR}" opacity="0.45"><title>read-only window: '
                     f'{report.get("read_only_window_seconds")} s</title></rect>')
    for row, phase in enumerate(phases):
        y = ROW * row + 4
        colour = PHASE_COLOURS.get(phase["name"], "#555")
        width = max(phase["seconds"] / span * WIDTH, 2)
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{html.escape(phase["name"])}</text>'
                     f'<rect x="{x(phase["started_at"]):.1f}" y="{y}" width="{width:.1f}" height="{ROW - 8}" '
                     f'fill="{colour}"><title>{html.escape(phase["name"])}: {phase["seconds"]:.1f} s</title></rect>')
    if passes:
        y = ROW * len(phases) + 4
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">passes</text>')
        for item in passes:
            width = max(item["seconds"] / span * WIDTH, 2)
            parts.append(f'<rect x="{x(item["started_at"]):.1f}" y="{y + 3}" width="{width:.1f}" height="{ROW - 14}" '
                         f'fill="#6c757d"><title>pass {item["pass"]}: {item["seconds"]:.1f} s, {item["files"]} files, '
                         f'{item["uploaded"]} uploaded</title></rect>')
    for row, (label, colour, spans) in enumerate(clients):
        y = ROW * (len(phases) + (1 if passes else 0) + row) + 4
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{label}</text>')
        for begin, finish in spans:
            width = max((finish - begin) / span * WIDTH, 2)
            parts.append(f'<rect class="clients" x="{x(begin):.1f}" y="{y + 3}" width="{width:.1f}" '
                         f'height="{ROW - 14}" fill="{colour}"><title>{label}: {finish - begin:.2f} s</title></rect>')
    for restart in report.get("restarts", []):
        if restart["started_at"] >= start - 1:
            parts.append(f'<rect class="restart" x="{x(restart["started_at"]):.1f}" y="0" '
                         f'width="{max(restart["seconds"] / span * WIDTH, 2):.1f}" height="{height - 20}" '
                         f'fill="{RESTART_COLOUR}" opacity="0.6"><title>restart: {restart["seconds"]:.1f} s</title></rect>')
    parts.append(f'<text x="{LABEL}" y="{height - 4}" font-size="11">{_when(start)}</text>'
                 f'<text x="{LABEL + WIDTH}" y="{height - 4}" font-size="11" text-anchor="end">'
                 f'+{span:.1f} s</text></svg>')
    return "".join(parts)


def client_rows(report: Mapping[str, Any]) -> list[tuple[str, str, list]]:
    """(label, colour, [start, end] spans) of what clients saw: pushes refused, reads unanswered."""
    rows = []
    if report.get("pushes_refused_from") and report.get("readonly_off_at"):
        rows.append(("pushes refused", PUSHES_COLOUR, [[report["pushes_refused_from"], report["readonly_off_at"]]]))
    on = report.get("readonly_on_at") or 0
    reads = [span for restart in report.get("restarts", []) if restart["started_at"] >= on
             for span in restart.get("unanswered", [])]
    if reads:
        rows.append(("reads unanswered", READS_COLOUR, reads))
    return rows


def _seconds(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(report: Mapping[str, Any], title: str = "migrator report") -> str:
    """The whole page, from a report.json's contents."""
    window = report.get("read_only_window_seconds")
    verification = report.get("verification") or {}
    images = report.get("images") or {}
    through = images.get("through_registry") or {}
    outcome_ok = report.get("outcome") == "done" and not images.get("missing")
    phases = [[p["name"], f'{p["seconds"]:.1f} s', p.get("uploaded_objects", 0), _size(p.get("uploaded_bytes", 0)),
               p.get("deleted_objects", 0), p.get("s3_requests", 0)] for p in report.get("phases", [])]
    diff = report.get("config_diff") or ""
    legend = (f'<p class="legend"><span><i class="swatch" style="background:{WINDOW_COLOUR}"></i>read-only window: '
              f'pushes refused (405)</span><span><i class="swatch" style="background:{RESTART_COLOUR}"></i>registry '
              'restart: requests in flight cut</span><span><i class="swatch" style="background:'
              f'{PUSHES_COLOUR}"></i>pushes refused</span><span><i class="swatch" style="background:{READS_COLOUR}">'
              '</i>reads unanswered</span></p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Outcome: <span class="{'ok' if outcome_ok else 'bad'}">{html.escape(str(report.get('outcome')))}</span>.
Read-only window: <b>{_seconds(window)}</b> (restarts {report.get('restart_seconds', 0):.1f} s); clients saw pushes
refused for <b>{_seconds(report.get('pushes_refused_seconds'))}</b> and reads unanswered for
<b>{_seconds(report.get('reads_refused_seconds'))}</b>,
from {_when(report.get('readonly_on_at'))} to {_when(report.get('readonly_off_at'))}; {report.get('passes', 0)} passes;
final pass: {html.escape(str((report.get('final_pass') or {}).get('method', 'n/a')))}.</p>
<h2>Timeline</h2>
{legend}
{timeline(report)}
<h2>Phases</h2>
{_table(["phase", "time", "uploaded", "bytes", "deleted", "S3 requests"], phases)}
<h2>Verification</h2>
{_table(["method", "source objects", "bucket objects", "missing", "extra", "mismatched"],
        [[verification.get("method", ""), verification.get("source_objects"), verification.get("bucket_objects"),
          verification.get("missing"), verification.get("extra"), verification.get("mismatched")]])}
<h2>Image proofs</h2>
{_table(["tags", "manifests", "blobs", "missing", "broken in the source", "tags pulled through the registry",
         "failed through the registry"],
        [[images.get("tags"), images.get("manifests"), images.get("blobs"), images.get("missing"),
          images.get("source_broken"), through.get("tags"), through.get("failures")]])}
<h2>Config change</h2>
<pre>{html.escape(diff) or "no registry config in the plan"}</pre>
</body></html>
"""


def write_html(path: Path, report: Mapping[str, Any]) -> Path:
    """report.html beside report.json (written whole, then renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(report, f"migrator report: {report.get('outcome') or 'in progress'}"))
    tmp.replace(path)
    return path
