"""`freehold audit report`: one self-contained HTML page an auditor can read offline.

It answers, for a period: who deployed which model digest where and when, what the
evaluations concluded, which memory subjects were exported, imported or erased (by
pseudonym), and how much each API key used each model. Every file is verified first and the
verdict heads the page: a report over a tampered or unsigned log says so before anything
else. Pure: events in, HTML out (the CLI reads the files).
"""

from __future__ import annotations

import html
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PASS = "#1a7f37"
FAIL = "#cf222e"
WARN = "#9a6700"
BAR = "#0969da"
MUTED = "#57606a"
WIDTH = 760
OPERATOR_MANAGERS = {"freehold-operator", "kopf"}


@dataclass
class FileVerdict:
    path: str
    events: int
    problems: list[str]
    warnings: list[str]
    last: str = ""  # SEQ:HASH of the last event: an anchor for the next verify
    trusted: bool = True  # False: checked without a trust anchor (unverified)

    @property
    def exit_code(self) -> int:
        if self.problems:
            return 1
        if not self.trusted:
            return 4
        return 2 if self.warnings else 0


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    files: list[FileVerdict] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # in the period, by time


_RELATIVE = re.compile(r"^(\d+)([mhdw])$")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (a date or a date and time; UTC unless it says otherwise) or a span back
    from now: 30m, 24h, 7d, 2w."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _time(event: dict[str, Any]) -> datetime:
    return parse_time(str(event["time"]))


def select(
    logs: Iterable[tuple[FileVerdict, list[dict[str, Any]]]],
    since: datetime | None,
    until: datetime | None,
) -> Report:
    report = Report(since, until)
    for verdict, events in logs:
        report.files.append(verdict)
        for event in events:
            when = _time(event)
            if (since is None or when >= since) and (until is None or when < until):
                report.events.append(event)
    report.events.sort(key=_time)
    return report


# -- rendering ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _short(digest: Any) -> str:
    text = str(digest or "")
    return text[:19] + "..." if len(text) > 22 else text


def _when(event: dict[str, Any]) -> str:
    return _time(event).strftime("%Y-%m-%d %H:%M:%S")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f"<p class='muted'>{_e(empty)}</p>"
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _name(ref: dict[str, Any] | None) -> str:
    ref = ref or {}
    return _e(f"{ref.get('namespace')}/{ref.get('name')}")


def _integrity(files: list[FileVerdict]) -> str:
    rows = []
    for f in files:
        if f.problems:
            state = f"<b style='color:{FAIL}'>TAMPERED</b>: " + _e("; ".join(f.problems[:5]))
        elif not f.trusted:
            state = (
                f"<b style='color:{WARN}'>UNVERIFIED</b>: the chain holds together, but no "
                "trusted key was given (--trusted-key): anyone could have re-signed it"
            )
        elif f.warnings:
            state = f"<b style='color:{WARN}'>intact, partly unsigned</b>: " + _e(
                "; ".join(f.warnings)
            )
        else:
            state = f"<b style='color:{PASS}'>intact, every event signed by a trusted key</b>"
        rows.append(
            [f"<code>{_e(f.path)}</code>", str(f.events), state, f"<code>{_e(f.last)}</code>"]
        )
    return _table(
        ["log", "events", "verdict (freehold audit verify)", "last event (keep as --anchor)"],
        rows,
        "No logs given.",
    )


def _deployments(events: list[dict[str, Any]]) -> str:
    rows = []
    for ev in events:
        data = ev["data"]
        if ev["type"] == "model.served":
            before = data.get("previousDigest")
            what = f"now serves <code>{_e(_short(data['modelDigest']))}</code>" + (
                f" (was <code>{_e(_short(before))}</code>)" if before else " (first version)"
            )
            rows.append(
                [_when(ev), _name(data.get("resource")), what, _e(data.get("region")), "operator"]
            )
        elif ev["type"].startswith("resource.") and (data.get("resource") or {}).get("kind") in (
            "ModelDeployment",
            "ModelRouter",
            "MemoryStore",
        ):
            people = [m for m in data.get("managers") or [] if m not in OPERATOR_MANAGERS]
            kind = data["resource"]["kind"]
            digest = data.get("modelDigest")
            what = f"{kind} {ev['type'].split('.', 1)[1]} (generation {data.get('generation')})"
            if digest:
                what += f", model <code>{_e(_short(digest))}</code>"
            rows.append(
                [
                    _when(ev),
                    _name(data.get("resource")),
                    what,
                    _e(data.get("region")),
                    _e(", ".join(people) or "-"),
                ]
            )
    return _table(
        ["when (UTC)", "resource", "what", "region", "changed by (field managers)"],
        rows,
        "No deployment changes in this period.",
    )


def _evaluations(events: list[dict[str, Any]]) -> str:
    rows = []
    for ev in events:
        if ev["type"] != "evaluation.finished":
            continue
        data = ev["data"]
        gates = data.get("gates") or []
        failed = [g for g in gates if not g.get("passed")]
        verdict = (
            f"<b style='color:{FAIL}'>{len(failed)} of {len(gates)} gates failed</b>: "
            + _e(", ".join(f"{g['suite']}.{g['metric']} = {g.get('value')}" for g in failed))
            if failed
            else f"<b style='color:{PASS}'>all {len(gates)} gates passed</b>"
        )
        rows.append(
            [
                _when(ev),
                _name(data.get("resource")),
                f"<code>{_e(_short(data.get('modelDigest')))}</code>",
                _e(data.get("phase")),
                verdict,
                _e(data.get("signer") or "unsigned"),
            ]
        )
    return _table(
        ["when (UTC)", "EvalJob", "model digest", "phase", "gates", "result signed by"],
        rows,
        "No evaluation finished in this period.",
    )


def _memory(events: list[dict[str, Any]]) -> str:
    rows = []
    for ev in events:
        if not ev["type"].startswith("memory."):
            continue
        data = ev["data"]
        count = data.get("records", data.get("versions"))
        subject = data.get("subject") or ", ".join(data.get("subjects") or [])
        rows.append(
            [
                _when(ev),
                _e(ev["component"]),
                _e(ev["type"].split(".", 1)[1]),
                f"<code>{_e(subject)}</code>",
                _e(count),
            ]
        )
    return _table(
        ["when (UTC)", "store", "action", "subject (pseudonym)", "records"],
        rows,
        "No memory exports, imports or erasures in this period.",
    )


def _bars(title: str, values: list[tuple[str, float]], unit: str) -> str:
    """Horizontal bars, one per label (inline SVG: the page needs nothing from outside)."""
    if not values:
        return ""
    top = max(v for _, v in values) or 1.0
    row, left = 22, 190
    height = row * len(values) + 30
    parts = [
        f"<svg role='img' aria-label='{_e(title)}' width='{WIDTH}' height='{height}' "
        "xmlns='http://www.w3.org/2000/svg'>",
        f"<text x='0' y='14' font-size='12' fill='{MUTED}'>{_e(title)}</text>",
    ]
    for n, (label, value) in enumerate(values):
        y = 24 + n * row
        w = value / top * (WIDTH - left - 90)
        parts.append(
            f"<text x='{left - 6}' y='{y + 14}' font-size='12' text-anchor='end'>{_e(label)}</text>"
            f"<rect x='{left}' y='{y + 2}' width='{max(w, 1):.1f}' height='{row - 6}' "
            f"fill='{BAR}'/><text x='{left + w + 6:.1f}' y='{y + 14}' font-size='12' "
            f"fill='{MUTED}'>{value:g} {_e(unit)}</text>"
        )
    return "".join(parts) + "</svg>"


def _timeline(events: list[dict[str, Any]]) -> str:
    """Requests per hour over the period, stacked answered / refused."""
    if not events:
        return ""
    hours: dict[datetime, list[int]] = defaultdict(lambda: [0, 0])
    for ev in events:
        hour = _time(ev).replace(minute=0, second=0, microsecond=0)
        hours[hour][0 if int(ev["data"].get("status") or 0) < 400 else 1] += 1
    first, last = min(hours), max(hours)
    slots = int((last - first).total_seconds() // 3600) + 1
    top = max(a + r for a, r in hours.values())
    left, bottom, plot_h = 50, 170, 140
    bar_w = min((WIDTH - left - 20) / slots, 48.0)  # one hour is a bar, not the plot
    parts = [
        f"<svg role='img' aria-label='requests per hour' width='{WIDTH}' height='200' "
        "xmlns='http://www.w3.org/2000/svg'>"
        f"<line x1='{left}' y1='{bottom}' x2='{WIDTH - 20}' y2='{bottom}' stroke='{MUTED}'/>"
        f"<text x='0' y='14' font-size='12' fill='{MUTED}'>requests per hour "
        f"(<tspan fill='{BAR}'>answered</tspan>, <tspan fill='{FAIL}'>refused or failed</tspan>)"
        "</text>"
    ]
    for hour, (ok, bad) in hours.items():
        x = left + int((hour - first).total_seconds() // 3600) * bar_w
        h_ok, h_bad = ok / top * plot_h, bad / top * plot_h
        parts.append(
            f"<rect x='{x + 1:.1f}' y='{bottom - h_ok:.1f}' width='{max(bar_w - 2, 1):.1f}' "
            f"height='{h_ok:.1f}' fill='{BAR}'/>"
            f"<rect x='{x + 1:.1f}' y='{bottom - h_ok - h_bad:.1f}' "
            f"width='{max(bar_w - 2, 1):.1f}' height='{h_bad:.1f}' fill='{FAIL}'/>"
        )
    parts.append(
        f"<text x='{left}' y='{bottom + 16}' font-size='11' fill='{MUTED}'>"
        f"{first:%Y-%m-%d %H:00}</text><text x='{WIDTH - 20}' y='{bottom + 16}' font-size='11' "
        f"text-anchor='end' fill='{MUTED}'>{last:%Y-%m-%d %H:00}</text></svg>"
    )
    return "".join(parts)


def _access(events: list[dict[str, Any]]) -> str:
    access = [ev for ev in events if ev["type"] == "inference.access"]
    if not access:
        return "<p class='muted'>No inference access records in this period.</p>"
    per: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in access:
        data = ev["data"]
        per[(str(data.get("keyId") or "no key"), str(data.get("model")))].append(data)
    rows = []
    for (key, model), items in sorted(per.items()):
        refused = Counter(
            int(i.get("status") or 0) for i in items if int(i.get("status") or 0) >= 400
        )
        latencies = [float(i["latencyMs"]) for i in items if int(i.get("status") or 0) < 400]
        rows.append(
            [
                f"<code>{_e(key)}</code>",
                _e(", ".join(sorted({str(i.get("tenant") or "-") for i in items}))),
                _e(model),
                str(len(items)),
                _e(", ".join(f"{n} x {s}" for s, n in sorted(refused.items())) or "-"),
                str(sum(int(i.get("inputTokens") or 0) for i in items)),
                str(sum(int(i.get("outputTokens") or 0) for i in items)),
                f"{statistics.median(latencies):.0f}" if latencies else "-",
            ]
        )
    by_key = Counter(str(ev["data"].get("keyId") or "no key") for ev in access)
    return "".join(
        [
            _timeline(access),
            _bars("requests per API key", [(k, float(n)) for k, n in by_key.most_common()], ""),
            _table(
                [
                    "API key id",
                    "tenant",
                    "model",
                    "requests",
                    "refused or failed (status)",
                    "input tokens",
                    "output tokens",
                    "median latency ms",
                ],
                rows,
                "",
            ),
        ]
    )


def render(report: Report) -> str:
    events = report.events
    period = (f"{report.since:%Y-%m-%d %H:%M} UTC" if report.since else "the first event") + (
        f" to {report.until:%Y-%m-%d %H:%M} UTC" if report.until else " to the last event"
    )
    tampered = any(f.problems for f in report.files)
    banner = (
        f"<p class='banner' style='background:{FAIL}'>At least one log was tampered with: "
        "what follows is what the files say now, not necessarily what happened.</p>"
        if tampered
        else ""
    )
    changes = Counter(ev["type"] for ev in events if ev["type"].startswith(("child.", "vault.")))
    style = (
        "body{font-family:sans-serif;margin:24px;color:#24292f;max-width:1000px}"
        "table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #d0d7de;padding:4px 8px;font-size:13px;text-align:left}"
        f".muted{{color:{MUTED};font-size:12px}}code{{font-size:12px}}"
        ".banner{color:white;padding:8px 12px;font-weight:bold}"
    )
    sections = [
        "<h1>Freehold audit report</h1>",
        f"<p>{_e(period)} &middot; {len(events)} events from {len(report.files)} logs</p>",
        banner,
        "<h2>Integrity</h2>",
        _integrity(report.files),
        "<h2>Deployments: who deployed which model digest where</h2>",
        _deployments(events),
        "<h2>Evaluations and gates</h2>",
        _evaluations(events),
        "<h2>Memory: exports, imports and erasures</h2>",
        _memory(events),
        "<h2>Inference access by API key</h2>",
        _access(events),
        "<h2>Changes the operator made</h2>",
        _table(
            ["change", "count"],
            [[_e(k), str(v)] for k, v in sorted(changes.items())],
            "No child objects or Vault roles changed in this period.",
        ),
        "<p class='muted'>Events hold no prompt, completion or memory text: subjects are "
        "pseudonyms and API keys are named by a digest prefix.</p>",
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Freehold audit report"
        f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def read_log(
    path: Path, trusted: set[bytes] | None = None
) -> tuple[FileVerdict, list[dict[str, Any]]]:
    """A log's verdict against the `trusted` keys (None: unverified) and its events
    (lines that do not parse are left to the verdict)."""
    import json

    from freehold_serving.audit import verify

    verdict = verify(path, trusted)
    events = []
    for line in path.read_bytes().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "time" in event and "type" in event:
            events.append(event)
    last = f"{verdict.last[0]}:{verdict.last[1]}"
    found = FileVerdict(
        str(path), verdict.events, verdict.problems, verdict.warnings, last, verdict.trusted
    )
    return found, events
