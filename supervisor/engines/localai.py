"""LocalAI: ``local-ai run --config-file … --models-path … --address …``.

Liveness is ``/readyz`` (503 while startup preload runs since v4.8.0, 200 before that
version once the HTTP server is up); readiness is every configured model in ``/v1/models``,
which lists configured models only, not loaded ones (see ../shared/LOCALAI-NOTES.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ..modelconfig import ModelSet
from ..settings import Engine, Settings
from ..versions import Version, at_least
from ..vocab import LoadState
from .base import (
    Activity,
    Call,
    EngineLaunch,
    RenderedFile,
    RestartAnswer,
    ServerPaths,
    metric_samples,
    openai_probe,
)

# The hand-run setup's variables that do not come from [server] settings.
DEFAULT_ENV = {
    "LOCALAI_LOG_LEVEL": "info",
    "LOCALAI_PARALLEL_REQUESTS": "true",
    "PYTHON_GRPC_MAX_WORKERS": "8",
}


def environment(settings: Settings) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """LocalAI's environment for the version in ``localai.version`` (core/cli/run.go), and
    notes on variables left out or that do nothing there. Unknown version: the hand-run
    container's variables, which every version accepts. What the user set in
    ``localai.environment`` is always passed; only a note says when it does nothing. The
    version the server reports later is not used here: learning it must not change the spec
    (a restart nobody asked for)."""
    srv = settings.server
    version = Version.parse(settings.localai.version)
    mine: dict[str, str] = {"LOCALAI_THREADS": str(srv.threads),
                            "LLAMACPP_PARALLEL": str(srv.parallel), **DEFAULT_ENV}
    user = settings.localai.environment
    notes: list[tuple[str, str]] = []

    def note(name: str, why: str, instead: str) -> None:
        done = "passed as asked" if name in user else instead
        notes.append((name, ("set in localai.environment but " if name in user else "")
                      + f"{why}: {done}"))

    if at_least(version, 3, 9, unknown=False):
        # Deprecated since v3.9.0: an alias of the LRU limit it introduced.
        if srv.single_active_backend:
            mine["LOCALAI_MAX_ACTIVE_BACKENDS"] = "1"
        note("LOCALAI_SINGLE_ACTIVE_BACKEND", f"deprecated on {version}",
             "LOCALAI_MAX_ACTIVE_BACKENDS=1 is passed instead")
    else:
        mine["LOCALAI_SINGLE_ACTIVE_BACKEND"] = "true" if srv.single_active_backend else "false"
    if at_least(version, 4, 8, unknown=False):
        # A model restart (/backend/shutdown) waits 30 s for a busy or hung model, then
        # fails unless this is set; with it, LocalAI stops the model after those 30 s
        # (pkg/model/loader.go ShutdownModel). Only explicit shutdowns and idle eviction use
        # it: a busy model is never evicted for another one (that is FORCE_EVICTION_WHEN_BUSY).
        mine["LOCALAI_FORCE_BACKEND_SHUTDOWN"] = "true"
    if at_least(version, 4, 1, unknown=False):
        del mine["LOCALAI_PARALLEL_REQUESTS"]
        note("LOCALAI_PARALLEL_REQUESTS",
             f"does nothing on {version} (requests are always parallel since v4.1.0)",
             "left out")
    return {**mine, **user}, tuple(notes)


API_KEYS_FILE = "api_keys.json"
# "model not found" (v4.1.0 to v4.7.x), "model tiny-b not found" (v3.9.x): pkg/model/process.go.
_NOT_FOUND = re.compile(r"model (\S+ )?not found")
_RETRY_AFTER = re.compile(r"retry after ((?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s)?)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# LocalAI's first cooldown, when the answer does not say.
COOLDOWN_FALLBACK_SECONDS = 10.0


def go_duration(text: str) -> float:
    """Go's Duration.String() for whole seconds and up: ``1h2m3s``, ``5m0s``, ``20s``."""
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)([hms])", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


_INFERENCE_PATHS = ("/completions", "/embeddings", "/chat/", "/v1/audio", "/tts")
# backend.proto StatusResponse.State: UNINITIALIZED 0, BUSY 1, READY 2, ERROR -1.
_BACKEND_BUSY = 1


class LocalAIEngine:
    kind = Engine.LOCALAI
    liveness_path = "/readyz"
    readiness_path = "/v1/models"
    default_binary = "local-ai"

    def render(self, models: ModelSet, paths: ServerPaths, settings: Settings,
               api_key: str | None = None) -> EngineLaunch:
        env, notes = environment(settings)
        files: tuple[RenderedFile, ...] = ()
        if api_key is not None:
            # LocalAI reads api_keys.json from LOCALAI_CONFIG_DIR (v2.1.0+,
            # core/application/config_file_watcher.go): the key stays out of `docker inspect`.
            files = (RenderedFile(API_KEYS_FILE, json.dumps([api_key]), secret=True),)
            env["LOCALAI_CONFIG_DIR"] = paths.rendered_dir
        args = (
            "run",
            "--config-file", paths.model_config,
            "--models-path", paths.models_dir,
            "--address", f"{settings.endpoint.listen_host}:{settings.endpoint.listen_port}",
            *settings.localai.extra_args,
        )
        return EngineLaunch(args=args, env=tuple(sorted(env.items())), files=files,
                            env_notes=notes)

    def listed_models(self, body: Any) -> dict[str, LoadState | None]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return {}
        return {str(m["id"]): None for m in data if isinstance(m, dict) and "id" in m}

    def loaded_call(self) -> Call:
        return Call("GET", "/system")

    def loaded_models(self, body: Any) -> dict[str, LoadState]:
        """``GET /system``: ``loaded_models`` lists what runs now; nothing else is loaded."""
        loaded = body.get("loaded_models") if isinstance(body, dict) else None
        if not isinstance(loaded, list):
            return {}
        return {str(m["id"]): LoadState.LOADED for m in loaded
                if isinstance(m, dict) and "id" in m}

    def probe_call(self, model: str, embeddings: bool, *, allow_load: bool = False) -> Call:
        # LocalAI has no "do not load" switch: callers only probe unloaded models when idle.
        return openai_probe(model, embeddings)

    def restart_model_calls(self, model: str) -> list[Call]:
        # The backend is reloaded lazily by the next request (the next probe).
        return [Call("POST", "/backend/shutdown", {"model": model})]

    def restart_answer(self, status: int, text: str) -> RestartAnswer:
        """``/backend/shutdown`` (core/http/endpoints/localai/backend_monitor.go,
        pkg/model/process.go): 200 stopped; a model not loaded is 404 since v4.8.0 and a 500
        "model [X] not found" before; a busy (or hung) model is, since v4.8.0, a 500 "model is
        still busy" after a 30 s wait unless LOCALAI_FORCE_BACKEND_SHUTDOWN=true (before
        v4.8.0 LocalAI forces the shutdown itself after its retries: a 200)."""
        if status == 200:
            return RestartAnswer.DONE
        if status == 404 or (status == 500 and _NOT_FOUND.search(text)):
            return RestartAnswer.NOT_LOADED
        if status == 500 and "still busy" in text:
            return RestartAnswer.BUSY
        return RestartAnswer.FAILED

    def restart_alone_refused(self, version: Version | None, hung: bool) -> str | None:
        """Before v4.8.0 ``/backend/shutdown`` waits for a busy model with no deadline while
        holding the loader's global lock (pkg/model/process.go deleteProcess, loader.go
        ShutdownModel at v4.7.0; with LOCALAI_FORCE_BACKEND_SHUTDOWN for about 110 s): a hung
        model would hang every other request with it. A model that fails fast is not busy."""
        if hung and not at_least(version, 4, 8, unknown=False):
            return (f"LocalAI {version or 'of unknown version'} would wait for the hung model "
                    "while holding its global loader lock (fixed in v4.8.0)")
        return None

    def cooldown_seconds(self, status: int, text: str) -> float | None:
        """v4.7.0+: ``model "X" load is in cooldown after a recent failure; retry after 20s``
        (pkg/model/loader.go ModelLoadCooldownError). A 503 with Retry-After when the model
        names its backend (core/http/app.go); a 500 when LocalAI tries its backends in turn,
        whose "all backends returned error" wraps the text with %s and loses the error type
        (pkg/model/initializers.go): the text is what both share."""
        if status not in (500, 503) or "load is in cooldown" not in text:
            return None
        match = _RETRY_AFTER.search(text)
        return go_duration(match.group(1)) if match else COOLDOWN_FALLBACK_SECONDS

    def model_log_call(self, model: str) -> Call | None:
        # Since v4.1.0: the backend process's stdout/stderr, kept per model.
        return Call("GET", f"/api/backend-logs/{quote(model, safe='')}")

    def model_log_lines(self, body: Any) -> list[tuple[str, str]]:
        """``[{"timestamp", "stream", "text"}, ...]`` (pkg/model/backend_log_store.go)."""
        if not isinstance(body, list):
            return []
        return [(str(item.get("timestamp", "")),
                 f"{item.get('timestamp', '')} {item.get('stream', '')} {item.get('text', '')}")
                for item in body if isinstance(item, dict)]

    def model_log_filter(self, model: str) -> Callable[[str], bool]:
        """Without /api/backend-logs, the backend's output is in LocalAI's own log only at
        debug level: ``GRPC stderr id=<model>-<address> line=…`` (pkg/model/process.go)."""
        marks = (f"id={model}-", f'id="{model}-')

        def accept(line: str) -> bool:
            plain = _ANSI.sub("", line)  # xlog colours keys on a terminal
            return "GRPC std" in plain and any(m in plain for m in marks)

        return accept

    def model_log_missing(self, model: str, kept: bool) -> str | None:
        """Backend logs: none before v4.1.0; off by default v4.1.0 to v4.6.x (on since
        v4.7.0, runtime_settings.json enable_backend_logging); in LocalAI's own log at debug
        level only."""
        if kept:
            return (f"# {model}: LocalAI has no output of its backend yet (it is written "
                    "once the model loads; v4.1.0 to v4.6.x keep it only with "
                    "enable_backend_logging in runtime_settings.json)")
        return (f"# {model}: this LocalAI keeps no per-model log (/api/backend-logs is "
                "v4.1.0+), and its own log has the backend's output only with "
                "LOCALAI_LOG_LEVEL=debug (set it in localai.environment)")

    def version_call(self) -> Call:
        return Call("GET", "/version")

    def version(self, body: Any) -> str | None:
        """``{"version": "v4.9.0"}`` (core/http/endpoints/localai)."""
        value = body.get("version") if isinstance(body, dict) else None
        return str(value) if value else None

    def unload_call(self, model: str) -> Call:
        # Since v4.8.0: 200 stopped / 404 not loaded; before: 200, or 500 when not loaded.
        return Call("POST", "/backend/shutdown", {"model": model})

    def activity_calls(self, loaded: list[str]) -> list[Call]:
        """The api_call histogram, then each loaded model's backend monitor."""
        return [Call("GET", "/metrics"),
                *(Call("GET", f"/backend/monitor?model={quote(m, safe='')}") for m in loaded)]

    def activity(self, answers: list[tuple[int, str]]) -> Activity:
        """Work: completed inference calls (``api_call`` histogram). In flight: loaded
        backends whose monitor says BUSY; unknown when a monitor does not answer (the
        llama.cpp backend does not implement Status, see LOCALAI-NOTES)."""
        if not answers or answers[0][0] != 200:
            return Activity(None, None)
        calls = metric_samples(answers[0][1], "api_call_count")
        if calls is None:
            return Activity(None, None)
        work = sum(v for labels, v in calls
                   if any(p in labels.get("path", "") for p in _INFERENCE_PATHS))
        busy = 0
        for status, text in answers[1:]:
            try:
                state = json.loads(text).get("state") if status == 200 else None
            except (ValueError, AttributeError):
                state = None
            if not isinstance(state, int):
                return Activity(work, None)
            busy += state == _BACKEND_BUSY
        return Activity(work, busy)
