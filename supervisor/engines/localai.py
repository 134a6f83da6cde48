"""LocalAI: ``local-ai run --config-file … --models-path … --address …``.

Liveness is ``/readyz`` (503 while startup preload runs since v4.8.0, 200 before that
version once the HTTP server is up); readiness is every configured model in ``/v1/models``,
which lists configured models only, not loaded ones (see ../shared/LOCALAI-NOTES.md).
"""

from __future__ import annotations

from typing import Any

from ..modelconfig import ModelSet
from ..settings import Engine, Settings
from .base import EngineLaunch, ServerPaths

# The hand-run setup's variables that do not come from [server] settings.
DEFAULT_ENV = {
    "LOCALAI_LOG_LEVEL": "info",
    "LOCALAI_PARALLEL_REQUESTS": "true",
    "PYTHON_GRPC_MAX_WORKERS": "8",
}


class LocalAIEngine:
    kind = Engine.LOCALAI
    liveness_path = "/readyz"
    readiness_path = "/v1/models"
    default_binary = "local-ai"

    def render(self, models: ModelSet, paths: ServerPaths, settings: Settings) -> EngineLaunch:
        srv = settings.server
        env = {
            "LOCALAI_THREADS": str(srv.threads),
            "LOCALAI_SINGLE_ACTIVE_BACKEND": "true" if srv.single_active_backend else "false",
            "LLAMACPP_PARALLEL": str(srv.parallel),
            **DEFAULT_ENV,
            **settings.localai.environment,
        }
        args = (
            "run",
            "--config-file", paths.model_config,
            "--models-path", paths.models_dir,
            "--address", f"{srv.listen_host}:{srv.listen_port}",
            *settings.localai.extra_args,
        )
        return EngineLaunch(args=args, env=tuple(sorted(env.items())))

    def listed_models(self, body: Any) -> dict[str, str | None]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return {}
        return {str(m["id"]): None for m in data if isinstance(m, dict) and "id" in m}
