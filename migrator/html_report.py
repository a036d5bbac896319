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
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
td { overflow-wrap: anywhere; }
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


def _front(front: Optional[Mapping[str, int]]) -> str:
    """Requests nginx answered clients during the run (registry.front), by kind, from its access log."""
    if not front:
        return ""
    return (f"<p>Through the front (nginx's access log): <b>{front['reads']}</b> reads, "
            f"<span class=\"{'bad' if front['reads_failed'] else 'ok'}\">{front['reads_failed']} failed</span>; "
            f"<b>{front['pushes']}</b> push requests, {front['pushes_refused']} refused read-only, "
            f"<span class=\"{'bad' if front['pushes_failed'] else 'ok'}\">{front['pushes_failed']} failed</span>.</p>")


def timeline(report: Mapping[str, Any], around: Optional[tuple[float, float]] = None) -> str:
    """An SVG: a row of the attempts (each labelled with its outcome), one row a phase, passes beneath, the read-only
    window shaded across, restarts as red bars. ``around``: only that stretch of time, to its own scale."""
    phases = [p for p in report.get("phases", []) if p.get("started_at")]
    attempts = [a for a in report.get("attempts", []) if a.get("started_at")]
    if not phases and not attempts:
        return "<p>No timeline: the report has no timed phases.</p>"
    ends = [p["started_at"] + p["seconds"] for p in phases] + [a["ended_at"] for a in attempts if a.get("ended_at")]
    start, end = around or (min([p["started_at"] for p in phases] + [a["started_at"] for a in attempts]),
                            max(ends + [report.get("readonly_off_at") or 0]))
    span = max(end - start, 1e-3)

    def x(epoch: float) -> float:
        return LABEL + min(max(epoch - start, 0), span) / span * WIDTH

    def bar(begin: float, seconds: float, y: float, height: float, fill: str, title: str, css: str = "") -> str:
        left, right = x(begin), x(begin + seconds)
        if begin + seconds < start or begin > end:
            return ""
        return (f'<rect{css} x="{left:.1f}" y="{y:.1f}" width="{max(right - left, 2):.1f}" height="{height}" '
                f'fill="{fill}"><title>{html.escape(title)}</title></rect>')

    phases = [p for p in phases if p["started_at"] + p["seconds"] >= start and p["started_at"] <= end]
    passes = [p for p in report.get("pass_history", []) if p["started_at"] + p["seconds"] >= start
              and p["started_at"] <= end]
    clients = client_rows(report)
    rows = 1 + len(phases) + (1 if passes else 0) + len(clients)
    height = ROW * rows + 30
    parts = [f'<svg viewBox="0 0 {LABEL + WIDTH + 20} {height}" style="width:100%;max-width:{LABEL + WIDTH + 20}px" '
             'role="img" aria-label="timeline of the migration">']
    for window in report.get("closed_windows", []):
        parts.append(bar(window["on"], window["off"] - window["on"], 0, height - 20, WINDOW_COLOUR,
                         f"read-only window, closed by going back: {window['off'] - window['on']:.1f} s",
                         ' class="read-only-window" opacity="0.3"'))
    on, off = report.get("readonly_on_at"), report.get("readonly_off_at")
    if on:
        parts.append(bar(on, (off or end) - on, 0, height - 20, WINDOW_COLOUR, "read-only window: "
                         f"{report.get('read_only_window_seconds')} s", ' class="read-only-window" opacity="0.45"'))
    parts.append('<text x="4" y="19" font-size="12">attempts</text>')
    for number, attempt in enumerate(attempts, 1):
        outcome = attempt.get("outcome") or ("in progress" if number == len(attempts) and not attempt.get("ended_at")
                                             else "ended without a word (killed?)")
        finish = attempt.get("ended_at") or (attempts[number]["started_at"] if number < len(attempts) else end)
        colour = "#2a9d8f" if outcome == "done" else "#adb5bd" if outcome.startswith("stopped: read-only flip declined") \
            else "#c1121f"
        parts.append(bar(attempt["started_at"], finish - attempt["started_at"], 7, ROW - 10, colour,
                         f"attempt {number}: {outcome}", ' class="attempt"'))
        label = f"{number}: {outcome}"[:60]
        if start <= attempt["started_at"] <= end:
            parts.append(f'<text x="{x(attempt["started_at"]) + 3:.1f}" y="{ROW + 6}" font-size="10">'
                         f'{html.escape(label)}</text>')
    for row, phase in enumerate(phases, 1):
        y = ROW * row + 12
        colour = PHASE_COLOURS.get(phase["name"], "#555")
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{html.escape(phase["name"])}</text>')
        parts.append(bar(phase["started_at"], phase["seconds"], y, ROW - 8, colour,
                         f'{phase["name"]}: {phase["seconds"]:.1f} s'))
    if passes:
        y = ROW * (len(phases) + 1) + 12
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">passes</text>')
        for item in passes:
            parts.append(bar(item["started_at"], item["seconds"], y + 3, ROW - 14, "#6c757d",
                             f'pass {item["pass"]}: {item["seconds"]:.1f} s, {item["files"]} files, '
                             f'{item["uploaded"]} uploaded'))
    for row, (label, colour, spans) in enumerate(clients):
        y = ROW * (len(phases) + 1 + (1 if passes else 0) + row) + 12
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{label}</text>')
        for begin, finish in spans:
            parts.append(bar(begin, finish - begin, y + 3, ROW - 14, colour, f"{label}: {finish - begin:.2f} s",
                             ' class="clients"'))
    for restart in report.get("restarts", []):
        parts.append(bar(restart["started_at"], restart["seconds"], 0, height - 20, RESTART_COLOUR,
                         f'restart: {restart["seconds"]:.1f} s', ' class="restart" opacity="0.6"'))
    parts.append(f'<text x="{LABEL}" y="{height - 4}" font-size="11">{_when(start)}</text>'
                 f'<text x="{LABEL + WIDTH}" y="{height - 4}" font-size="11" text-anchor="end">'
                 f'+{span:.1f} s</text></svg>')
    return "".join(parts)


def window_timeline(report: Mapping[str, Any]) -> str:
    """The read-only window to its own scale (with a margin either side), whatever the attempts before it took."""
    windows = report.get("closed_windows") or []
    on = report.get("readonly_on_at") or (windows[-1]["on"] if windows else None)
    if not on:
        return ""
    off = report.get("readonly_off_at") or (windows[-1]["off"] if windows and not report.get("readonly_on_at") else
                                            (report.get("stopped") or {}).get("at") or on)
    margin = max((off - on) * 0.1, 1.0)
    return f"<h2>The read-only window, to its own scale</h2>\n{timeline(report, (on - margin, off + margin))}"


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


def _subject(report: Mapping[str, Any]) -> str:
    """What was migrated, where to, by which plan, and when."""
    attempts = report.get("attempts") or []
    when = (f"{_when(attempts[0]['started_at'])} to {_when(attempts[-1].get('ended_at'))}, {len(attempts)} attempt"
            f"{'s' if len(attempts) != 1 else ''}" if attempts else "n/a")
    rows: list[list[Any]] = [["registry config", report.get("registry_config") or "none (the plan has no registry: section)"],
                             ["source", report.get("source")], ["bucket", report.get("bucket")],
                             ["plan", report.get("plan")], ["ran", when]]
    return _table(["", ""], [[label, value or "n/a"] for label, value in rows]).replace("<tr><th></th><th></th></tr>", "")


def _window(report: Mapping[str, Any]) -> str:
    """The read-only window in a sentence, as far as this run got."""
    on, off = report.get("readonly_on_at"), report.get("readonly_off_at")
    if on is None:
        return "The registry was not made read-only: clients saw nothing of this run."
    if off is None:
        return (f"The registry was made read-only at {_when(on)}; this attempt stopped before it was read-write on s3 "
                "(the outcome says where it is).")
    return (f"Read-only window: <b>{_seconds(report.get('read_only_window_seconds'))}</b> (restarts "
            f"{report.get('restart_seconds', 0):.1f} s); clients saw pushes refused for "
            f"<b>{_seconds(report.get('pushes_refused_seconds'))}</b> and reads unanswered for "
            f"<b>{_seconds(report.get('reads_refused_seconds'))}</b>, from {_when(on)} to {_when(off)};")


def _seconds(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(report: Mapping[str, Any], title: str = "migrator report") -> str:
    """The whole page, from a report.json's contents."""
    verification = report.get("verification") or {}
    images = report.get("images") or {}
    through = images.get("through_registry") or {}
    before = images.get("sample_on_s3") or {}
    outcome_ok = report.get("outcome") == "done" and not images.get("missing")
    phases = [[p["name"], f'{p["seconds"]:.1f} s', p.get("uploaded_objects", 0), _size(p.get("uploaded_bytes", 0)),
               p.get("deleted_objects", 0), p.get("s3_requests", 0)] for p in report.get("phases", [])]
    diff = report.get("config_diff") or ""
    restart = ("registry restart: clients on the standby meanwhile" if report.get("front")
               else "registry restart: requests in flight cut")
    legend = (f'<p class="legend"><span><i class="swatch" style="background:{WINDOW_COLOUR}"></i>read-only window: '
              f'pushes refused (405)</span><span><i class="swatch" style="background:{RESTART_COLOUR}"></i>{restart}'
              '</span><span><i class="swatch" style="background:'
              f'{PUSHES_COLOUR}"></i>pushes refused</span><span><i class="swatch" style="background:{READS_COLOUR}">'
              '</i>reads unanswered</span></p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{_subject(report)}
<p>Outcome: <span class="{'ok' if outcome_ok else 'bad'}">{html.escape(_outcome(report))}</span>.
{_window(report)} {report.get('passes', 0)} passes;
final pass: {html.escape(str((report.get('final_pass') or {}).get('method', 'not run')))}.</p>
{_front(report.get('front'))}
<h2>Timeline</h2>
{legend}
{timeline(report)}
{window_timeline(report)}
<h2>Phases</h2>
{_table(["phase", "time", "uploaded", "bytes", "deleted", "S3 requests"], phases)}
<h2>Verification</h2>
{_table(["method", "source objects", "bucket objects", "missing", "extra", "mismatched"],
        [[verification.get("method", ""), verification.get("source_objects"), verification.get("bucket_objects"),
          verification.get("missing"), verification.get("extra"), verification.get("mismatched")]])}
<h2>Image proofs</h2>
{_table(["tags", "manifests", "blobs", "missing", "broken in the source",
         "tags pulled on s3 before the window", "in the window", "failed"],
        [[images.get("tags"), images.get("manifests"), images.get("blobs"), images.get("missing"),
          images.get("source_broken"), before.get("tags", 0), through.get("tags", 0),
          before.get("failures", 0) + through.get("failures", 0)]])}
<h2>Config change</h2>
<pre>{html.escape(diff) or ("none: the config is as it was" if report.get("registry_config")
                          else "no registry config in the plan")}</pre>
</body></html>
"""


def _outcome(report: Mapping[str, Any]) -> str:
    stopped = report.get("stopped")
    return f"stopped: {stopped['reason']}" if stopped else report.get("outcome") or "in progress"


def write_html(path: Path, report: Mapping[str, Any]) -> Path:
    """report.html beside report.json (written whole, then renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(report, f"migrator report: {_outcome(report).split(';')[0][:80]}"))
    tmp.replace(path)
    return path
