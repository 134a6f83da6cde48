"""Human renderings of the typed status: aligned on a terminal, tab-separated when piped."""

from __future__ import annotations

from .policy import State
from .status import Status


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def render_status(st: Status, tty: bool) -> str:
    """``supervisorctl status`` without ``--json``."""
    inst = st.instance
    cfg = st.config
    state = st.state.value
    if st.reason and st.state is not State.RUNNING:
        state += f" ({st.reason})"
    rows = [
        ("state", state),
        ("since", fmt_seconds(st.since_seconds)),
        ("engine", f"{st.engine} on {st.runtime}"
         + ("" if st.runtime_connected else " (engine unreachable)")),
        ("server", st.server_url or "-"),
        ("instance", f"{inst.id[:12]} pid {inst.pid or '-'}" if inst else "-"),
        ("uptime", fmt_seconds(st.uptime_seconds)),
        ("restarts", str(st.restarts)),
        ("config", f"{cfg.file} revision {cfg.revision or '-'}"),
    ]
    if st.retry_in_seconds is not None:
        rows.append(("retry in", fmt_seconds(st.retry_in_seconds)))
    if st.recent_failures:
        rows.append(("failures", f"{st.recent_failures} recently"
                     + (" (crash-looping; still restarted)" if st.crash_looping else "")))
    if cfg.rejected:
        rows.append(("REJECTED", "latest config change not applied:"))
        rows.extend(("", err) for err in cfg.rejected.errors)
    if cfg.pending:
        rows.append(("PENDING", "waiting for model files to be complete:"))
        rows.extend(("", f"{p.model}: {p.file}: {p.reason}") for p in cfg.pending)
    sep = "\t"
    width = max(len(k) for k, _ in rows)
    lines = [f"{key:<{width}}  {value}" if tty else f"{key}{sep}{value}" for key, value in rows]
    if st.models:
        table = [("MODEL", "FILE", "LISTED", "STATE")] + [
            (m.name, m.file or "-", "yes" if m.listed else "no",
             m.state.value if m.state else "-") for m in st.models
        ]
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        lines.append("")
        for r in table:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         if tty else sep.join(r))
    return "\n".join(lines)
