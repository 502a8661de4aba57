"""Self-contained HTML report of a replay: a per-device timeline plot, a summary by decision and
reason, and the messages that failed verification.

Input is neutral (``ReportData``): the replay driver fills it from its decision lines and the events it
fed the engine. Output is one HTML file with inline CSS and inline SVG — no scripts, no network, so it
opens anywhere (a DNO analyst's laptop, an attachment to an incident) and renders identically in a
headless browser for tests.
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DecisionRow", "Mark", "ReportData", "VerifyFailure", "Window", "render_html"]

# Colours by mark kind and decision; also used for the legend.
_MARK_STYLE = {
    "activation": ("#1f77b4", "▲"),
    "activation-pending": ("#9ecae1", "△"),
    "activation-failed": ("#7f7f7f", "✕"),
    "cancellation": ("#7f7f7f", "⊘"),
    "ad1": ("#d62728", "●"),
    "restoration": ("#2ca02c", "■"),
    "other": ("#8c564b", "◆"),
}
_DECISION_COLOUR = {
    "forward": "#d62728",
    "suppress": "#2ca02c",
    "release-forward": "#ff7f0e",
    "release-suppress": "#17becf",
    "hold": "#bcbd22",
}


@dataclass(frozen=True, slots=True)
class Mark:
    """One point on a device's timeline (event time, not arrival time)."""

    device: str
    time: dt.datetime
    kind: str  # activation | activation-pending | activation-failed | cancellation | ad1 | restoration | other
    label: str
    decision: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A suppression window drawn behind a device's timeline."""

    device: str
    opens: dt.datetime
    closes: dt.datetime


@dataclass(frozen=True, slots=True)
class DecisionRow:
    message_id: str
    kind: str
    decision: str
    reason: str
    held: bool
    device: str
    time: dt.datetime | None


@dataclass(frozen=True, slots=True)
class VerifyFailure:
    message_id: str
    kind: str
    reason: str
    detail: str = ""


@dataclass
class ReportData:
    """What a report shows. A long run fills it with the ``add_*`` methods, which keep only what
    :func:`render_html` draws or lists (the marks and windows of the first ``keep_devices`` devices, the first
    ``keep_rows`` decisions and verification failures) and count the rest, so that its memory does not grow
    with the number of messages; the report is the same as from lists holding everything. The lists may
    also be filled directly (then nothing is counted besides them); do not mix the two ways."""

    title: str
    source: str
    marks: list[Mark] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    decisions: list[DecisionRow] = field(default_factory=list)
    verify_failures: list[VerifyFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what the ``add_*`` methods keep: at least what :func:`render_html` is asked to show
    keep_devices: int = 60
    keep_rows: int = 2000
    #: counted by the ``add_*`` methods: every decision by (decision, reason), every failure, every device
    decisions_total: int = 0
    decision_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    failures_total: int = 0
    devices: set[str] = field(default_factory=set)
    _kept: dict[str, None] = field(default_factory=dict)  # the devices drawn, in the order of their first mark

    def add_mark(self, mark: Mark) -> None:
        self.devices.add(mark.device)
        if mark.device in self._kept:
            self.marks.append(mark)
        elif len(self._kept) < self.keep_devices:
            self._kept[mark.device] = None
            self.marks.append(mark)

    def add_window(self, window: Window) -> None:
        # drawn when its device is (a device not yet marked may still be, while there is room)
        if window.device in self._kept or len(self._kept) < self.keep_devices:
            self.windows.append(window)

    def add_decision(self, row: DecisionRow) -> None:
        self.decisions_total += 1
        self.decision_counts[(row.decision, row.reason)] += 1
        if len(self.decisions) < self.keep_rows:
            self.decisions.append(row)

    def add_failure(self, failure: VerifyFailure) -> None:
        self.failures_total += 1
        if len(self.verify_failures) < self.keep_rows:
            self.verify_failures.append(failure)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px;font-size:13px}
.dec-forward{color:#b00} .dec-suppress{color:#070} .ok{color:#070} .bad{color:#b00}
code{font-size:12px}
svg text{font-family:system-ui,sans-serif}
"""


def _fmt(t: dt.datetime | None) -> str:
    if t is None:
        return ""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _timeline_svg(
    marks: Sequence[Mark], windows: Sequence[Window], max_devices: int, devices: int | None = None
) -> tuple[str, int]:
    # the first ``max_devices`` devices in the order their first mark comes, each with its marks and windows:
    # one pass over each list (a search of the device list per mark took minutes for 100k devices)
    by_device: dict[str, list[Mark]] = {}
    for m in marks:
        got = by_device.get(m.device)
        if got is not None:
            got.append(m)
        elif len(by_device) < max_devices:
            by_device[m.device] = [m]
    if devices is None:
        devices = len({m.device for m in marks})
    shown = list(by_device)
    if not shown:
        return "<p>No device events.</p>", 0
    windows_of: dict[str, list[Window]] = {}
    for w in windows:
        if w.device in by_device:
            windows_of.setdefault(w.device, []).append(w)
    times = [m.time for ms in by_device.values() for m in ms] + [
        t for ws in windows_of.values() for w in ws for t in (w.opens, w.closes)
    ]
    t0, t1 = min(times), max(times)
    span = max((t1 - t0).total_seconds(), 60.0)
    t0 -= dt.timedelta(seconds=span * 0.03)
    span *= 1.06
    label_w, plot_w, row_h, top = 210, 820, 30, 34
    width = label_w + plot_w + 20
    height = top + row_h * len(shown) + 20

    def x(t: dt.datetime) -> float:
        return label_w + (t - t0).total_seconds() / span * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="device timeline" id="timeline">'
    ]
    # time axis ticks
    for i in range(6):
        t = t0 + dt.timedelta(seconds=span * i / 5)
        xi = x(t)
        out.append(f'<line x1="{xi:.1f}" y1="{top - 8}" x2="{xi:.1f}" y2="{height - 14}" stroke="#eee"/>')
        anchor = "end" if i == 5 else "middle"
        out.append(
            f'<text x="{xi:.1f}" y="{top - 14}" font-size="10" text-anchor="{anchor}" fill="#666">'
            f"{html.escape(_fmt(t))}</text>"
        )
    for row, device in enumerate(shown):
        y = top + row * row_h + row_h / 2
        out.append(
            f'<text x="4" y="{y + 4:.1f}" font-size="11" fill="#222" class="device-label">{html.escape(device)}</text>'
        )
        out.append(f'<line x1="{label_w}" y1="{y:.1f}" x2="{label_w + plot_w}" y2="{y:.1f}" stroke="#bbb"/>')
        for w in windows_of.get(device, ()):
            x0, x1 = x(w.opens), x(w.closes)
            out.append(
                f'<rect class="window" x="{x0:.1f}" y="{y - 9:.1f}" width="{max(x1 - x0, 1):.1f}" height="18" '
                f'fill="#2ca02c" fill-opacity="0.15" stroke="#2ca02c" stroke-opacity="0.5">'
                f"<title>window {html.escape(_fmt(w.opens))} → {html.escape(_fmt(w.closes))}</title></rect>"
            )
        for m in by_device[device]:
            colour, glyph = _MARK_STYLE.get(m.kind, _MARK_STYLE["other"])
            if m.kind == "ad1" and m.decision:
                colour = _DECISION_COLOUR.get(m.decision, colour)
            tip = f"{m.kind} {_fmt(m.time)} {m.label}" + (f" → {m.decision}" if m.decision else "")
            out.append(
                f'<text class="mark mark-{html.escape(m.kind)}" x="{x(m.time):.1f}" y="{y + 5:.1f}" font-size="15" '
                f'text-anchor="middle" fill="{colour}">{glyph}<title>{html.escape(tip)}</title></text>'
            )
    out.append("</svg>")
    return "".join(out), devices - len(shown)


def _summary(counts: Counter[tuple[str, str]]) -> str:
    totals: Counter[str] = Counter()
    for (dec, _reason), n in counts.items():
        totals[dec] += n
    rows = "".join(
        f'<tr><td class="dec-{html.escape(dec)}">{html.escape(dec)}</td><td>{html.escape(reason)}</td>'
        f'<td class="num">{n}</td></tr>'
        for (dec, reason), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
    )
    total_rows = "".join(
        f'<tr><td class="dec-{html.escape(dec)}">{html.escape(dec)}</td><td class="num">{n}</td></tr>'
        for dec, n in sorted(totals.items())
    )
    return (
        '<table id="summary-by-decision"><tr><th>decision</th><th>messages</th></tr>'
        + total_rows
        + "</table>"
        + '<table id="summary"><tr><th>decision</th><th>reason</th><th>messages</th></tr>'
        + rows
        + "</table>"
    )


def render_html(data: ReportData, *, max_devices: int = 60, max_rows: int = 2000) -> str:
    """Render the report as one self-contained HTML document: the timeline of the first ``max_devices``
    devices, the first ``max_rows`` decisions and the first ``max_rows`` verification failures (the
    summary counts all of them)."""
    counted = bool(data.decisions_total or data.failures_total or data.devices)  # filled by the add_* methods
    if counted and (max_devices > data.keep_devices or max_rows > data.keep_rows):
        raise ValueError("render_html: asked to show more than the report data kept")
    svg, hidden = _timeline_svg(data.marks, data.windows, max_devices, len(data.devices) if counted else None)
    n_decisions = data.decisions_total if counted else len(data.decisions)
    n_failures = data.failures_total if counted else len(data.verify_failures)
    counts = data.decision_counts if counted else Counter((d.decision, d.reason) for d in data.decisions)
    legend = "".join(
        f'<span style="color:{c}">{g} {html.escape(k)}</span>' for k, (c, g) in _MARK_STYLE.items()
    ) + "".join(f'<span style="color:{c}">● AD1 {html.escape(k)}</span>' for k, c in _DECISION_COLOUR.items())
    decision_rows = "".join(
        f"<tr><td><code>{html.escape(d.message_id)}</code></td><td>{html.escape(d.kind)}</td>"
        f'<td class="dec-{html.escape(d.decision)}">{html.escape(d.decision)}</td><td>{html.escape(d.reason)}</td>'
        f"<td>{'yes' if d.held else ''}</td><td>{html.escape(d.device)}</td><td>{html.escape(_fmt(d.time))}</td></tr>"
        for d in data.decisions[:max_rows]
    )
    failures = (
        "".join(
            f"<tr><td><code>{html.escape(f.message_id)}</code></td><td>{html.escape(f.kind)}</td>"
            f'<td class="bad">{html.escape(f.reason)}</td><td>{html.escape(f.detail)}</td></tr>'
            for f in data.verify_failures[:max_rows]
        )
        or '<tr><td colspan="4" class="ok">none</td></tr>'
    )
    failures_cut = (
        f"<p class='meta'>first {max_rows} of {n_failures} verification failures listed.</p>"
        if n_failures > max_rows
        else ""
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    more = f"<p class='meta'>{hidden} more devices not drawn.</p>" if hidden else ""
    cut = (
        f"<p class='meta'>first {max_rows} of {n_decisions} decisions listed.</p>"
        if n_decisions > max_rows
        else ""
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(data.title)}</h1><p class='meta'>source: {html.escape(data.source)} · "
        f"{n_decisions} inline decisions · {n_failures} verification failures</p>"
        f"<h2>Timeline by device</h2><div class='legend'>{legend}</div>{svg}{more}"
        f"<h2>Summary by decision and reason</h2>{_summary(counts)}"
        f"<h2>Messages that failed verification</h2><table id='verify-failures'><tr><th>message</th><th>kind</th>"
        f"<th>reason</th><th>detail</th></tr>{failures}</table>{failures_cut}"
        f"<h2>Decisions</h2><table id='decisions'><tr><th>message</th><th>kind</th><th>decision</th><th>reason</th>"
        f"<th>held</th><th>device</th><th>event time</th></tr>{decision_rows}</table>{cut}"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>"
    )
