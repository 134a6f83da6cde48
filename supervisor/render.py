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
    if st.maintenance:
        state += " [maintenance: `supervisorctl start` to end it]"
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
    gw = st.gateway
    if gw is not None:
        rows.append(("gateway", f"{gw.listen} -> {gw.upstream} ({gw.phase.value}"
                     + (f"; unloading {', '.join(gw.unloading)}" if gw.unloading else "") + ")"))
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
        models = [(m.name, m.file or "-", "yes" if m.listed else "no",
                   m.state.value if m.state else "-") for m in st.models]
        lines += ["", *_table([("MODEL", "FILE", "LISTED", "STATE"), *models], tty)]
    if gw is not None and gw.models:
        per_model = [
            (m.model, "yes" if m.resident else "no", str(m.in_flight), str(m.queued),
             str(m.requests.get("completed", 0)), str(m.requests.get("cut-off", 0)),
             str(m.requests.get("client-gone", 0)),
             str(m.refused), str(m.swaps), str(m.held),
             fmt_seconds(m.max_wait_seconds)) for m in gw.models]
        head = ("GATEWAY", "RESIDENT", "IN-FLIGHT", "QUEUED", "DONE", "CUT", "GONE", "REFUSED",
                "SWAPS", "HELD", "MAX-WAIT")
        lines += ["", *_table([head, *per_model], tty)]
    return "\n".join(lines)


def render_event(record: dict[str, object]) -> str:
    """One structured event as a line: time, level, event, then its fields."""
    fields = " ".join(f"{k}={v}" for k, v in record.items()
                      if k not in ("timestamp", "level", "event"))
    return (f"{record.get('timestamp', '')} {record.get('level', '')!s:<7} "
            f"{record.get('event', '')} {fields}").rstrip()


def render_models(st: Status, tty: bool) -> str:
    """``supervisorctl models``: each configured model's file and header facts, and health."""
    rows: list[tuple[str, ...]] = [("MODEL", "FILE", "SIZE", "ARCH", "CONTEXT", "TRAINED",
                                    "QUANT", "LOADED", "HEALTH")]
    for m in st.models:
        rows.append((m.name, m.file or "-", _size(m.size), m.architecture or "-",
                     str(m.context_size or "-"), str(m.trained_context or "-"),
                     m.quantization or "-", "yes" if m.loaded else "no", m.health.value))
    return "\n".join(_table(rows, tty))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _table(rows: list[tuple[str, ...]], tty: bool) -> list[str]:
    """Aligned columns on a terminal, tab-separated otherwise."""
    if not tty:
        return ["\t".join(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
