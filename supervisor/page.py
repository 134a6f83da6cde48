"""``GET /`` on the status API: a small read-only HTML page of the typed status, for people
who would rather look than read JSON. Rendered on the server from ``Status`` (every value
escaped), refreshed by the browser every few seconds; no scripts, no assets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from .policy import State
from .render import fmt_seconds
from .status import Status

REFRESH_SECONDS = 5

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; text-align: left; }
th { border-bottom: 1px solid #999; } tr:nth-child(even) td { background: #f4f4f4; }
.state { font-weight: bold; padding: .1em .5em; border-radius: .3em; }
.ok { background: #d9f2d9; } .warn { background: #fff0c2; } .bad { background: #f7d4d4; }
.muted { color: #777; }
"""


def _cls(state: State) -> str:
    if state is State.RUNNING:
        return "ok"
    if state in (State.FATAL, State.STOPPED):
        return "bad"
    return "warn"


def _table(cls: str, head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def render_page(st: Status) -> str:
    facts = [
        ("engine", f"{st.engine} on {st.runtime}"
         + ("" if st.runtime_connected else " (engine unreachable)")),
        ("server", st.server_url),
        ("instance", f"{st.instance.id[:12]} pid {st.instance.pid or '-'}" if st.instance
         else "-"),
        ("uptime", fmt_seconds(st.uptime_seconds)),
        ("restarts", f"{st.restarts}" + (" (crash-looping)" if st.crash_looping else "")),
        ("config", f"{st.config.file} revision {st.config.revision or '-'}"),
    ]
    if st.last_failure:
        facts.append(("last failure", f"{st.last_failure.cause.value}: {st.last_failure.hint}"))
    if st.config.rejected:
        facts.append(("REJECTED", "; ".join(st.config.rejected.errors)))
    if st.config.pending:
        facts.append(("PENDING", "; ".join(f"{p.model}: {p.reason}" for p in st.config.pending)))
    parts = [
        f'<h1>localai-supervisor <span class="state {_cls(st.state)}" id="state">'
        f"{escape(st.state.value)}</span></h1>",
        f'<p class="muted">{escape(st.reason + "; " if st.reason else "")}in this state for '
        f"{fmt_seconds(st.since_seconds)}; version {escape(st.version)}; refreshed every "
        f"{REFRESH_SECONDS} s</p>",
        _table("facts", ("", ""), facts),
        "<h2>Models</h2>",
        _table("models", ("model", "file", "listed", "loaded", "health", "last probe",
                          "restarts", "last error"),
               [(m.name, m.file or "-", "yes" if m.listed else "no",
                 "yes" if m.loaded else "no", m.health.value,
                 fmt_seconds(m.last_probe_seconds_ago) + (" ago" if m.last_probe_seconds_ago
                                                          is not None else ""),
                 str(m.restarts), m.last_error or m.output_warning or "")
                for m in st.models]),
    ]
    gw = st.gateway
    if gw is not None:
        parts += [
            f"<h2>Gateway</h2><p>{escape(gw.listen)} &rarr; {escape(gw.upstream)} "
            f"({escape(gw.phase.value)})</p>",
            _table("gateway", ("model", "resident", "in flight", "queued", "completed",
                               "cut off", "refused", "swaps", "held", "max wait"),
                   [(m.model, "yes" if m.resident else "no", str(m.in_flight), str(m.queued),
                     str(m.requests.get("completed", 0)), str(m.requests.get("cut-off", 0)),
                     str(m.refused), str(m.swaps),
                     str(m.held), fmt_seconds(m.max_wait_seconds)) for m in gw.models]),
        ]
    parts += [
        "<h2>Recent events</h2>",
        _table("events", ("when (UTC)", "event", "detail"),
               [(datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S"), e.event,
                 e.detail) for e in reversed(st.recent_events)]),
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
            f"<title>localai-supervisor: {escape(st.state.value)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
