"""``supervisorctl`` output: ``render.render_status`` of the typed ``Status``, and its one-line
errors."""

from __future__ import annotations

import grp
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli import CTL_UNREACHABLE, _unreachable
from supervisor.render import render_status as render_typed
from supervisor.status import Status


def model(name: str, file: str | None, listed: bool, state: str | None) -> dict[str, Any]:
    return {"name": name, "file": file, "size": 1 if file else None, "listed": listed,
            "state": state, "loaded": state == "loaded", "health": "unknown",
            "last_probe_seconds_ago": None, "last_error": None, "restarts": 0,
            "output_warning": None}


def render_status(st: dict[str, Any], tty: bool) -> str:
    """Render a status given as its JSON form (what supervisorctl receives)."""
    return render_typed(Status.model_validate(st), tty)

ERROR = "/etc/localai/config.yaml:3: tiny-a.context_size: Input should be a valid integer"

BACKOFF: dict[str, Any] = {
    "version": "0.1.0",
    "state": "BACKOFF",
    "since_seconds": 3.4,
    "reason": "exited: exit code 137, OOM-killed",
    "engine": "llama-server",
    "runtime": "docker",
    "runtime_connected": True,
    "server_url": "http://127.0.0.1:40080",
    "instance": None,
    "uptime_seconds": None,
    "supervisor_uptime_seconds": 60.0,
    "restarts": 2,
    "restarts_by_reason": {"crash": 2},
    "consecutive_failures": 2,
    "recent_failures": 2,
    "crash_looping": False,
    "last_failure": None,
    "model_restarts": 0,
    "drain": {"drains": 0, "drained_requests": 0, "cut_off_requests": 0},
    "idle_seconds": None,
    "retry_in_seconds": 4.6,
    "config": {
        "file": "/etc/localai/config.yaml",
        "models_dir": "/var/lib/localai/model",
        "revision": "0123456789ab",
        "spec": "feedfacefeedface",
        "rejected": {"at": 12.0, "errors": [ERROR, "second problem"]},
        "pending": [],
        "warnings": [],
        "checks": 3,
        "last_check": "rejected",
        "last_check_at": 12.0,
    },
    "models": [
        model("tiny-a", "tiny-a.gguf", True, "loaded"),
        model("tiny-b", None, False, None),
    ],
    "recent_events": [],
}

RUNNING: dict[str, Any] = {
    **BACKOFF,
    "state": "RUNNING",
    "since_seconds": 150.0,
    "reason": "config changed",
    "runtime_connected": False,
    "instance": {"id": "f00dfacecafe1234567890", "pid": 4242, "image": "llama-server:test",
                 "spec": "feedfacefeedface", "started_at": 1.0},
    "uptime_seconds": 7260.0,
    "retry_in_seconds": None,
    "recent_failures": 0,
    "config": {**BACKOFF["config"], "rejected": None},
    "models": [],
}


def test_tty_form_is_aligned() -> None:
    assert render_status(BACKOFF, tty=True) == "\n".join([
        "state     BACKOFF (exited: exit code 137, OOM-killed)",
        "since     3.4s",
        "engine    llama-server on docker",
        "server    http://127.0.0.1:40080",
        "instance  -",
        "uptime    -",
        "restarts  2",
        "config    /etc/localai/config.yaml revision 0123456789ab",
        "retry in  4.6s",
        "failures  2 recently",
        "REJECTED  latest config change not applied:",
        f"          {ERROR}",
        "          second problem",
        "",
        "MODEL   FILE         LISTED  STATE",
        "tiny-a  tiny-a.gguf  yes     loaded",
        "tiny-b  -            no      -",
    ])


def test_piped_form_is_tab_separated() -> None:
    assert render_status(BACKOFF, tty=False) == "\n".join([
        "state\tBACKOFF (exited: exit code 137, OOM-killed)",
        "since\t3.4s",
        "engine\tllama-server on docker",
        "server\thttp://127.0.0.1:40080",
        "instance\t-",
        "uptime\t-",
        "restarts\t2",
        "config\t/etc/localai/config.yaml revision 0123456789ab",
        "retry in\t4.6s",
        "failures\t2 recently",
        "REJECTED\tlatest config change not applied:",
        f"\t{ERROR}",
        "\tsecond problem",
        "",
        "MODEL\tFILE\tLISTED\tSTATE",
        "tiny-a\ttiny-a.gguf\tyes\tloaded",
        "tiny-b\t-\tno\t-",
    ])


def test_running_hides_the_reason_and_shows_the_instance() -> None:
    assert render_status(RUNNING, tty=True) == "\n".join([
        "state     RUNNING",
        "since     2.5m",
        "engine    llama-server on docker (engine unreachable)",
        "server    http://127.0.0.1:40080",
        "instance  f00dfacecafe pid 4242",
        "uptime    2.0h",
        "restarts  2",
        "config    /etc/localai/config.yaml revision 0123456789ab",
    ])


def test_minimal_status_before_any_config() -> None:
    st = {**BACKOFF, "state": "STOPPED", "reason": None, "engine": "localai",
          "runtime": "process", "server_url": "", "restarts": 0, "retry_in_seconds": None,
          "recent_failures": 0,
          "since_seconds": 3.0, "models": [],
          "config": {**BACKOFF["config"], "revision": None, "rejected": None}}
    lines = render_status(st, tty=False).split("\n")
    assert lines == [
        "state\tSTOPPED",
        "since\t3.0s",
        "engine\tlocalai on process",
        "server\t-",
        "instance\t-",
        "uptime\t-",
        "restarts\t0",
        "config\t/etc/localai/config.yaml revision -",
    ]


def test_process_instance_without_pid() -> None:
    st = {**RUNNING, "instance": {**RUNNING["instance"], "id": "abc", "pid": None}}
    fields = dict(line.split("\t", 1) for line in render_status(st, tty=False).split("\n"))
    assert fields["instance"] == "abc pid -"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0.0s"), (59.96, "60.0s"), (119.9, "119.9s"), (120, "2.0m"), (5400, "90.0m"),
     (7200, "2.0h"), (90000, "25.0h"), (None, "-")],
)
def test_durations(seconds: float | None, shown: str) -> None:
    st = {**RUNNING, "uptime_seconds": seconds}
    fields = dict(line.split("\t", 1) for line in render_status(st, tty=False).split("\n"))
    assert fields["uptime"] == shown


def test_crash_looping_and_pending_files_are_shown() -> None:
    st = {**RUNNING, "recent_failures": 4, "crash_looping": True,
          "config": {**RUNNING["config"], "pending": [
              {"model": "big", "file": "/m/big.gguf", "reason": "incomplete: 10 of 20 bytes"}]}}
    fields = render_status(st, tty=False).split("\n")
    assert "failures\t4 recently (crash-looping; still restarted)" in fields
    assert fields[-2:] == ["PENDING\twaiting for model files to be complete:",
                           "\tbig: /m/big.gguf: incomplete: 10 of 20 bytes"]


def test_a_socket_the_user_may_not_reach_is_said_to_be_permissions_not_a_dead_daemon(
        tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    err = _unreachable(sock, PermissionError(13, "Permission denied"))
    group = grp.getgrgid(tmp_path.stat().st_gid).gr_name
    assert err.code == CTL_UNREACHABLE
    assert str(err) == f"permission denied on {sock}: run as root or as a member of group " \
        f"{group!r}"
    assert "is localai-supervisor running?" in str(_unreachable(sock, FileNotFoundError(2, "x")))
