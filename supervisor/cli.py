"""Command lines: ``localai-supervisor`` (the daemon, the demo) and ``supervisorctl``."""

from __future__ import annotations

import argparse
import asyncio
import grp
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

from . import __version__
from .settings import DEFAULT_SETTINGS_FILE, ENV_PREFIX, Settings, SettingsError, load_settings

# supervisorctl exit codes (documented in --help and the README).
CTL_OK, CTL_UNHEALTHY, CTL_ERROR, CTL_UNREACHABLE = 0, 1, 2, 3


def _settings_path(arg: str | None) -> tuple[Path, bool]:
    """The settings file to read, and whether it must exist (named explicitly)."""
    if arg:
        return Path(arg), True
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_SETTINGS_FILE, False


def run_daemon(settings: Settings, settings_file: Path | None) -> int:
    from . import logs
    from .daemon import Daemon
    from .surfaces import start_surfaces

    logs.configure(settings.supervisor.log_format, settings.supervisor.log_level)
    return asyncio.run(Daemon(settings, settings_file=settings_file).run(
        servers=start_surfaces))


def daemon_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="localai-supervisor",
        description="Keep a local LLM server (LocalAI or llama.cpp's llama-server) running: "
        "watch its model config, restart it onto valid configurations only, probe it, and "
        "restart it with backoff when it fails.",
        epilog=f"Settings: a TOML file (default {DEFAULT_SETTINGS_FILE}) under environment "
        f"variables {ENV_PREFIX}SECTION__KEY, e.g. {ENV_PREFIX}SERVER__ENGINE=llama-server. "
        "Exit codes: 0 stopped cleanly, 1 runtime error, 2 invalid settings or model config.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"settings file (default {DEFAULT_SETTINGS_FILE}, or "
                        f"${ENV_PREFIX}CONFIG; a missing default file means all defaults)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the daemon (the default)")
    demo = sub.add_parser(
        "demo", help="run the embedded default: llama-server as a child process on two tiny "
        "generated models, no Docker; prints status and a chat completion")
    demo.add_argument("--dir", type=Path, default=None,
                      help="where the demo keeps models, config and state "
                      "(default ~/.local/state/localai-supervisor-demo)")
    demo.add_argument("--port", type=int, default=40080,
                      help="public port: the gateway; the server sits behind it on a free "
                      "loopback port (default 40080)")
    demo.add_argument("--status-port", type=int, default=40081,
                      help="status API port (default 40081)")
    demo.add_argument("--once", action="store_true",
                      help="stop after the first chat completions instead of running on")
    sub.add_parser("render", help="print the server spec the current settings and model "
                   "config would run (nothing is started)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        sys.exit(run_demo(args.dir, args.port, args.status_port, once=args.once))

    path, required = _settings_path(args.config)
    try:
        settings = load_settings(path, required=required)
    except SettingsError as exc:
        print(f"localai-supervisor: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command == "render":
        sys.exit(_render(settings))
    sys.exit(run_daemon(settings, path if path.exists() else None))


def _render(settings: Settings) -> int:
    from dataclasses import asdict

    from .configuration import render_spec
    from .engines import engine_for
    from .modelconfig import ConfigRejected, load_model_set

    engine = engine_for(settings.server.engine)
    try:
        models = load_model_set(settings.server.model_config_file, settings.server.models_dir)
    except ConfigRejected as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    try:
        spec, launch, _ = render_spec(settings, models, engine)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = asdict(spec)
    out["files"] = [{**f, "content": "(secret: not shown)"} if f["secret"] else f
                    for f in out["files"]]
    out["digest"] = spec.digest()
    out["dropped_fields"] = {name: list(f) for name, f in launch.dropped}
    print(json.dumps(out, indent=2, default=str))
    return 0


# ---- supervisorctl ------------------------------------------------------------------------


class CtlError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _unreachable(socket: Path, exc: OSError | aiohttp.ClientConnectorError) -> CtlError:
    """Why the socket could not be reached, in words: a permission problem is not a daemon
    that is down (aiohttp wraps the OSError)."""
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, PermissionError):
        try:
            group = f"group {grp.getgrgid(socket.parent.stat().st_gid).gr_name!r}"
        except (OSError, KeyError):
            group = "the socket's group"
        return CtlError(f"permission denied on {socket}: run as root or as a member of "
                        f"{group}", CTL_UNREACHABLE)
    return CtlError(f"cannot reach the daemon at {socket} ({cause.__class__.__name__}); is "
                    "localai-supervisor running? (systemctl status localai-supervisor)",
                    CTL_UNREACHABLE)


async def call(socket: Path, command: str, body: dict[str, Any] | None = None,
               timeout: float = 90.0) -> dict[str, Any]:
    """One request to the control socket; raises CtlError with the exit code to use."""
    connector = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as http:
            method = "GET" if command.partition("?")[0] in ("status", "version", "doctor") \
                else "POST"
            async with http.request(method, f"http://supervisor/v1/{command}",
                                    json=body) as resp:
                data: dict[str, Any] = await resp.json()
                if resp.status == 403:
                    raise CtlError(str(data.get("error", "refused")), CTL_ERROR)
                return data
    except (OSError, aiohttp.ClientConnectorError) as exc:
        raise _unreachable(socket, exc) from exc
    except TimeoutError as exc:
        raise CtlError(f"the daemon did not answer within {timeout:g}s", CTL_ERROR) from exc


async def _stream(socket: Path, what: str, lines: int, follow: bool, as_json: bool,
                  model: str | None = None) -> int:
    """Print the daemon's recent events or the server's log (and, following, new lines) as
    they come."""
    from .render import render_event

    query = f"n={lines}&follow={int(follow)}" + (
        f"&model={urllib.parse.quote(model, safe='')}" if model else "")
    connector = aiohttp.UnixConnector(path=str(socket))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10)) as http, \
                http.get(f"http://supervisor/v1/{what}?{query}") as resp:
            if resp.status != 200:
                data = await resp.json()
                raise CtlError(str(data.get("error", f"HTTP {resp.status}")), CTL_ERROR)
            async for raw in resp.content:
                text = raw.decode("utf-8", "replace").rstrip("\n")
                if what == "events" and not as_json:
                    text = render_event(json.loads(raw))
                elif what == "logs" and as_json:
                    text = json.dumps({"line": text})
                print(text, flush=True)
    except (OSError, aiohttp.ClientConnectorError) as exc:
        print(f"supervisorctl: {_unreachable(socket, exc)}", file=sys.stderr)
        return CTL_UNREACHABLE
    except CtlError as exc:
        print(f"supervisorctl: {exc}", file=sys.stderr)
        return exc.code
    return CTL_OK


def _doctor(args: argparse.Namespace) -> int:
    """Ask the daemon; when none answers (or --offline), check what can be checked here."""
    from .doctor import DoctorReport, render

    path, required = _settings_path(args.config)
    try:
        settings = load_settings(path, required=required)
    except SettingsError as exc:
        print(f"supervisorctl: {exc}", file=sys.stderr)
        return CTL_ERROR
    report = None
    if not args.offline:
        query = f"?model={urllib.parse.quote(args.model, safe='')}" if args.model else ""
        try:
            answer = asyncio.run(call(args.socket or settings.supervisor.control_socket,
                                      "doctor" + query, timeout=120))
        except CtlError as exc:
            if exc.code != CTL_UNREACHABLE:
                print(f"supervisorctl: {exc}", file=sys.stderr)
                return exc.code
            print(f"supervisorctl: {exc}; checking offline (config, models dir, host)",
                  file=sys.stderr)
        else:
            if "error" in answer:
                print(f"supervisorctl: {answer['error']}", file=sys.stderr)
                return CTL_ERROR
            report = DoctorReport.model_validate(answer)
    if report is None:
        from .checkup import offline_report

        report = offline_report(settings, args.model)
    print(json.dumps(report.model_dump(mode="json"), indent=2) if args.json
          else render(report), end="" if not args.json else "\n")
    return CTL_UNHEALTHY if report.findings else CTL_OK


def ctl_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="supervisorctl",
        description="Control a running localai-supervisor through its control socket.",
        epilog="Exit codes: 0 ok, 1 server not healthy (status) or request refused "
        "(check: warnings with --strict), 2 error (check: errors), 3 daemon not reachable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-s", "--socket", type=Path, default=None,
                        help="control socket (default: from the settings file, "
                        "/run/localai-supervisor/control.sock)")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"settings file to read the socket path from "
                        f"(default {DEFAULT_SETTINGS_FILE})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [
        sub.add_parser("status", help="server state, instance, config revision, models"),
        sub.add_parser("reload", help="re-read settings and model config and apply them; "
                       "returns when applied or rejected (with the reason)"),
        sub.add_parser("restart", help="restart the server now after draining requests in "
                       "flight (also leaves FATAL); with MODEL, restart only that model"),
        sub.add_parser("stop", help="stop the server (after draining) and keep it stopped: "
                       "maintenance, kept across reloads and supervisor restarts, shown in "
                       "status; the supervisor keeps running"),
        sub.add_parser("start", help="start the server again after `stop` (also leaves "
                       "FATAL)"),
        sub.add_parser("models", help="each configured model: file, size, architecture, "
                       "context, quantisation, loaded, health"),
        sub.add_parser("events", help="the supervisor's own recent structured events (a "
                       "ring of the last 1,000); -f to follow"),
    ]
    commands.append(sub.add_parser("logs", help="the server's log (the container's, or the "
                                   "process's log file); -f to follow"))
    commands.append(sub.add_parser("version", help="versions: supervisorctl, the daemon, the "
                                   "engine as it reports itself, the image"))
    commands[0].add_argument("model", nargs="?", metavar="MODEL",  # status
                             help="one model's details (exit 1 unless it is listed and not "
                             "failing)")
    by_name = {c.prog.split()[-1]: c for c in commands}
    by_name["logs"].add_argument("model", nargs="?", metavar="MODEL",
                                 help="only this model's log (LocalAI: its backend's own log; "
                                 "llama-server: its lines in the router's log)")
    for streamed, default in ((by_name["events"], 20), (by_name["logs"], 50)):
        streamed.add_argument("-f", "--follow", action="store_true",
                              help="keep printing new lines until interrupted")
        streamed.add_argument("-n", "--lines", type=int, default=default,
                              help=f"how many recent lines first (default {default})")
    by_name["restart"].add_argument("model", nargs="?", metavar="MODEL",
                             help="restart only this model, in place")
    by_name["restart"].add_argument("--force", action="store_true",
                             help="do not wait for requests in flight")
    doctor = sub.add_parser(
        "doctor", help="explain cut-off answers, special tokens in answers, 'could not load "
        "model' and slow swaps for the engine version running, with evidence and the fix as "
        "YAML: live from the daemon (its logs and state included), or offline from the "
        "config and models dir when no daemon answers (or with --offline). Exit 0 no "
        "findings, 1 findings")
    doctor.add_argument("model", nargs="?", metavar="MODEL", help="only this model")
    doctor.add_argument("--offline", action="store_true",
                        help="do not ask the daemon: config, models dir and host only")
    doctor.add_argument("-s", "--socket", type=Path, default=argparse.SUPPRESS,
                        help="control socket (as the global option)")
    check = sub.add_parser(
        "check", help="validate a model config, the models dir and the settings without a "
        "daemon (like nginx -t): exit 0 ok, 1 warnings with --strict, 2 errors")
    check.add_argument("model_config", nargs="?", type=Path, metavar="CONFIG",
                       help="model config to check (default: server.model_config_file)")
    check.add_argument("--models-dir", type=Path, help="default: server.models_dir")
    check.add_argument("--settings", metavar="FILE", help="settings file (default: -c or "
                       f"{DEFAULT_SETTINGS_FILE})")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings")
    for command in (*commands, check, doctor):
        # --json after the command name too (`supervisorctl status --json`).
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="print the raw JSON answer")
    for command in commands:
        command.add_argument("-s", "--socket", type=Path, default=argparse.SUPPRESS,
                             help="control socket (as the global option)")
    args = parser.parse_args(argv)

    if args.command == "check":
        from .check import render, run_check

        path, required = _settings_path(args.settings or args.config)
        checked = run_check(path, required, args.model_config, args.models_dir)
        print(render(checked, args.strict, args.json))
        sys.exit(checked.exit_code(args.strict))

    if args.command == "doctor":
        sys.exit(_doctor(args))

    socket = args.socket
    if socket is None:
        path, required = _settings_path(args.config)
        try:
            socket = load_settings(path, required=required).supervisor.control_socket
        except SettingsError as exc:
            print(f"supervisorctl: {exc}", file=sys.stderr)
            sys.exit(CTL_ERROR)
    if args.command in ("events", "logs"):
        try:
            sys.exit(asyncio.run(_stream(socket, args.command, args.lines, args.follow,
                                         args.json, getattr(args, "model", None))))
        except KeyboardInterrupt:
            sys.exit(CTL_OK)
    body: dict[str, Any] = {}
    if args.command == "restart":
        body = {"model": args.model, "force": args.force}
    try:
        result = asyncio.run(call(socket, "status" if args.command == "models"
                                  else args.command, body or None))
    except CtlError as exc:
        print(f"supervisorctl: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    if args.command == "version":
        result["supervisorctl"] = __version__
        if not args.json:
            for key in ("supervisorctl", "supervisor", "engine", "engine_version", "runtime",
                        "image", "spec"):
                print(f"{key}\t{result.get(key) or '-'}" if not sys.stdout.isatty()
                      else f"{key:<15} {result.get(key) or '-'}")
        else:
            print(json.dumps(result, indent=2))
        sys.exit(CTL_OK)
    if args.command == "status" and args.model:
        from .status import Status

        status = Status.model_validate(result)
        found = next((m for m in status.models if m.name == args.model), None)
        if found is None:
            print(f"supervisorctl: no model {args.model!r} in the applied config (models: "
                  f"{', '.join(m.name for m in status.models)})", file=sys.stderr)
            sys.exit(CTL_ERROR)
        data = found.model_dump(mode="json")
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for key, value in data.items():
                shown = "-" if value is None else value
                print(f"{key:<22} {shown}" if sys.stdout.isatty() else f"{key}\t{shown}")
        ok = found.listed and found.health.value not in (
            "failing", "restarting", "cooldown", "failed")
        sys.exit(CTL_OK if ok else CTL_UNHEALTHY)
    if args.command == "models":
        from .render import render_models
        from .status import Status

        status = Status.model_validate(result)
        print(json.dumps([m.model_dump(mode="json") for m in status.models], indent=2)
              if args.json else render_models(status, sys.stdout.isatty()))
        sys.exit(CTL_OK)
    if args.json:
        print(json.dumps(result, indent=2))
    if args.command == "status":
        from .render import render_status
        from .status import Status

        status = Status.model_validate(result)
        if not args.json:
            print(render_status(status, sys.stdout.isatty()))
        sys.exit(CTL_OK if status.state.value == "RUNNING" else CTL_UNHEALTHY)
    if result.get("ok", result.get("applied")) is False:
        if not args.json:
            errors = result.get("errors") or [result.get("error", "refused")]
            print(f"supervisorctl: {args.command} refused: " + "; ".join(errors),
                  file=sys.stderr)
        sys.exit(CTL_UNHEALTHY)
    if not args.json:
        if args.command == "reload":
            what = "restarting onto" if result.get("restarting") else "unchanged at"
            print(f"reload applied: {what} revision {result.get('revision')}")
        elif args.command in ("start", "stop"):
            print(f"{args.command} requested (state {result.get('state')})")
        elif result.get("model"):
            print(f"restart of model {result['model']} requested")
        else:
            print(f"restart requested (state {result.get('state')})")
    sys.exit(CTL_OK)
