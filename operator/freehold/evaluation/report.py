"""A self-contained HTML report of an evaluation result: no script, no font, no request
leaves the file (it is opened on air-gapped desks). Plots are inline SVG:
- scores with their 95% intervals, per suite (metrics on a 0-1 scale);
- the change from a baseline result, per suite, when one is given;
- the latency distribution (time to first token per request) of latency suites.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from freehold.api.eval_job import LOWER_IS_BETTER
from freehold.evaluation.signing import ResultSignatureError, verify

PASS = "#1a7f37"
FAIL = "#cf222e"
BAR = "#0969da"
MUTED = "#57606a"
WIDTH = 760


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if abs(value) >= 10 else f"{value:.3f}{unit}"


def gated(suite: dict[str, Any]) -> dict[str, Any]:
    metric: dict[str, Any] = suite["metrics"][suite["metric"]]
    return metric


def scores_plot(suites: list[dict[str, Any]]) -> str:
    """Each suite's gated metric on 0-1 (latency suites are plotted apart): a dot and
    its interval."""
    rows = [
        s for s in suites if s["metric"] not in LOWER_IS_BETTER and s["metric"] != "tokens_per_s"
    ]
    if not rows:
        return "<p class='muted'>No score suites.</p>"
    left, right, step = 180, WIDTH - 40, 34
    height = 40 + step * len(rows)
    scale = right - left
    parts = [
        f"<svg role='img' aria-label='scores with 95% intervals' width='{WIDTH}' "
        f"height='{height}' xmlns='http://www.w3.org/2000/svg'>"
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = left + tick * scale
        parts.append(
            f"<line x1='{x:.1f}' y1='20' x2='{x:.1f}' y2='{height - 14}' stroke='#d0d7de'/>"
            f"<text x='{x:.1f}' y='{height - 2}' font-size='11' text-anchor='middle' "
            f"fill='{MUTED}'>{tick:g}</text>"
        )
    for n, suite in enumerate(rows):
        m = gated(suite)
        y = 36 + n * step
        lo, hi, v = (max(0.0, min(1.0, m[k])) for k in ("low", "high", "value"))
        parts.append(
            f"<text x='{left - 10}' y='{y + 4}' font-size='12' text-anchor='end'>"
            f"{_e(suite['name'])} ({_e(suite['metric'])})</text>"
            f"<rect x='{left}' y='{y - 7}' width='{v * scale:.1f}' height='14' fill='{BAR}' "
            f"opacity='0.85'/>"
            f"<line x1='{left + lo * scale:.1f}' y1='{y}' x2='{left + hi * scale:.1f}' y2='{y}' "
            f"stroke='#24292f' stroke-width='2'/>"
            f"<line x1='{left + lo * scale:.1f}' y1='{y - 6}' x2='{left + lo * scale:.1f}' "
            f"y2='{y + 6}' stroke='#24292f' stroke-width='2'/>"
            f"<line x1='{left + hi * scale:.1f}' y1='{y - 6}' x2='{left + hi * scale:.1f}' "
            f"y2='{y + 6}' stroke='#24292f' stroke-width='2'/>"
        )
    parts.append("</svg>")
    return "".join(parts)


def regression_plot(suites: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    """Per suite in both results: the change of the gated metric, green when better."""
    before = {s["name"]: s for s in baseline.get("suites") or []}
    rows = []
    for suite in suites:
        old = before.get(suite["name"])
        if old is None or old["metric"] != suite["metric"]:
            continue
        delta = gated(suite)["value"] - gated(old)["value"]
        better = delta <= 0 if suite["metric"] in LOWER_IS_BETTER else delta >= 0
        rows.append((suite, delta, better, gated(old)["value"]))
    if not rows:
        return "<p class='muted'>No suite in common with the baseline.</p>"
    biggest = max(abs(d) for _, d, _, _ in rows) or 1.0
    middle, half, step = 180 + (WIDTH - 220) / 2, (WIDTH - 220) / 2, 34
    height = 30 + step * len(rows)
    parts = [
        f"<svg role='img' aria-label='change from the baseline' width='{WIDTH}' "
        f"height='{height}' xmlns='http://www.w3.org/2000/svg'>"
        f"<line x1='{middle}' y1='10' x2='{middle}' y2='{height - 6}' stroke='{MUTED}'/>"
    ]
    for n, (suite, delta, better, old) in enumerate(rows):
        y = 26 + n * step
        width = abs(delta) / biggest * half
        x = middle if delta >= 0 else middle - width
        colour = PASS if better else FAIL
        parts.append(
            f"<text x='170' y='{y + 4}' font-size='12' text-anchor='end'>{_e(suite['name'])}"
            f"</text><rect x='{x:.1f}' y='{y - 8}' width='{max(width, 1.5):.1f}' height='16' "
            f"fill='{colour}'/><text x='{WIDTH - 4}' y='{y + 4}' font-size='11' "
            f"text-anchor='end' fill='{MUTED}'>{_fmt(old)} &#8594; "
            f"{_fmt(gated(suite)['value'])} ({delta:+.3f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def latency_plot(suites: list[dict[str, Any]]) -> str:
    """A histogram of per-request time to first token, over every latency suite."""
    values = [
        float(item["scores"]["ttft_p50_ms"])
        for suite in suites
        if suite["task"] == "latency"
        for item in suite.get("items") or []
    ]
    if not values:
        return "<p class='muted'>No latency suite.</p>"
    low, high = min(values), max(values)
    bins = 12
    span = (high - low) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / span * bins))] += 1
    left, bottom, plot_h = 50, 190, 160
    bar_w = (WIDTH - left - 20) / bins
    top = max(counts)
    parts = [
        f"<svg role='img' aria-label='time to first token distribution' width='{WIDTH}' "
        f"height='220' xmlns='http://www.w3.org/2000/svg'>"
        f"<line x1='{left}' y1='{bottom}' x2='{WIDTH - 20}' y2='{bottom}' stroke='{MUTED}'/>"
    ]
    for n, count in enumerate(counts):
        h = count / top * plot_h
        x = left + n * bar_w
        parts.append(
            f"<rect x='{x + 1:.1f}' y='{bottom - h:.1f}' width='{bar_w - 2:.1f}' "
            f"height='{h:.1f}' fill='{BAR}'/>"
        )
    parts.append(
        f"<text x='{left}' y='{bottom + 16}' font-size='11' fill='{MUTED}'>{_fmt(low)} ms</text>"
        f"<text x='{WIDTH - 20}' y='{bottom + 16}' font-size='11' text-anchor='end' "
        f"fill='{MUTED}'>{_fmt(high)} ms</text>"
        f"<text x='{left}' y='14' font-size='11' fill='{MUTED}'>{len(values)} requests</text>"
        "</svg>"
    )
    return "".join(parts)


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def signature_line(result: dict[str, Any]) -> str:
    try:
        signer = verify(result)
    except ResultSignatureError as exc:
        style = MUTED if "not signed" in str(exc) else FAIL
        return f"<span style='color:{style}'>{_e(exc)}</span>"
    return f"<span style='color:{PASS}'>signature valid: {_e(signer)}</span>"


def render(result: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    suites: list[dict[str, Any]] = result.get("suites") or []
    gates = result.get("gates") or []
    verdict = (
        f"<b style='color:{PASS}'>ALL GATES PASSED</b>"
        if result.get("gatesPassed")
        else f"<b style='color:{FAIL}'>GATES FAILED</b>"
    )
    suite_rows = [
        [
            _e(s["name"]),
            _e(s["task"]),
            _e(name),
            _fmt(m["value"]),
            f"{_fmt(m['low'])} - {_fmt(m['high'])}",
            str(s["samples"]),
        ]
        for s in suites
        for name, m in s["metrics"].items()
    ]
    gate_rows = [
        [
            f"<b style='color:{PASS if g['passed'] else FAIL}'>"
            f"{'pass' if g['passed'] else 'FAIL'}</b>",
            _e(f"{g['suite']}.{g['metric']}"),
            _e(g.get("reason") or f"{g['operator']} {_fmt(g['threshold'])}"),
            _fmt(g.get("baseline")),
            _fmt(g["value"]),
        ]
        for g in gates
    ]
    target = result.get("target") or {}
    sections = [
        f"<h1>Evaluation {_e(result.get('job', ''))}</h1>",
        f"<p>{verdict} &middot; model <code>{_e(target.get('model'))}</code>",
        f" &middot; digest <code>{_e(target.get('digest') or 'not given')}</code>",
        f" &middot; seed {_e(result.get('seed'))}</p>",
        f"<p class='muted'>result {_e(result.get('digest'))} &middot; {signature_line(result)}",
        f" &middot; {_e(result.get('startTime', ''))} to {_e(result.get('completionTime', ''))}",
        "</p>",
        "<h2>Gates</h2>",
        _table(["", "gate", "bound", "baseline", "measured"], gate_rows)
        if gate_rows
        else "<p class='muted'>No gates.</p>",
        "<h2>Scores (95% bootstrap intervals)</h2>",
        scores_plot(suites),
    ]
    if baseline is not None:
        sections += [
            f"<h2>Change from the baseline ({_e(baseline.get('job', ''))})</h2>",
            regression_plot(suites, baseline),
        ]
    sections += [
        "<h2>Latency: time to first token</h2>",
        latency_plot(suites),
        "<h2>Every metric</h2>",
        _table(["suite", "task", "metric", "value", "95% interval", "n"], suite_rows),
    ]
    style = (
        "body{font-family:sans-serif;margin:24px;color:#24292f;max-width:820px}"
        "table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #d0d7de;padding:4px 8px;font-size:13px;text-align:left}"
        f".muted{{color:{MUTED};font-size:12px}}code{{font-size:12px}}"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Evaluation {_e(result.get('job', ''))}</title><style>{style}</style></head>"
        "<body>" + "".join(sections) + "</body></html>"
    )
