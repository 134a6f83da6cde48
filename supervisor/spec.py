"""The effective server spec: everything that, when changed, needs a restart — and its hash.

The hash is stored on the container as a label, so a restarted supervisor can tell whether the
running container is already what it would create (adopt it) or not (recreate it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .engines import EngineAdapter, EngineLaunch, RenderedFile, ServerPaths
from .modelconfig import ModelSet
from .settings import RuntimeKind, Settings

SPEC_VERSION = 1


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ServerSpec:
    """What to run; identical specs mean an identical server."""

    runtime: RuntimeKind
    engine: str
    # Docker image, or the host binary for the process runtime.
    program: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[RenderedFile, ...]
    mounts: tuple[Mount, ...]
    listen_port: int
    publish_host: str
    publish_port: int
    gpus: str
    # Model config revision: config content plus model file fingerprints.
    revision: str
    models: tuple[str, ...]
    # A model asks for mmlock/mlock: the container may lock all of its memory (Docker's
    # default memlock limit, 8 MiB, makes the lock fail and the load with it).
    memlock_unlimited: bool = False

    def digest(self) -> str:
        fields = asdict(self)
        if not self.memlock_unlimited:
            del fields["memlock_unlimited"]  # so specs from before this field keep their digest
        payload = json.dumps({"v": SPEC_VERSION, **fields}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def server_paths(settings: Settings, rendered_dir: Path) -> ServerPaths:
    """Where models, config and rendered files appear to the server."""
    srv = settings.server
    if srv.runtime is RuntimeKind.DOCKER:
        return ServerPaths(
            models_dir=settings.docker.container_models_dir,
            model_config=settings.docker.container_model_config,
            rendered_dir="/localai-supervisor",
        )
    return ServerPaths(
        models_dir=str(srv.models_dir.resolve()),
        model_config=str(srv.model_config_file.resolve()),
        rendered_dir=str(rendered_dir.resolve()),
    )


def rendered_dir(settings: Settings) -> Path:
    return settings.supervisor.state_dir / "rendered"


def build_spec(
    settings: Settings, models: ModelSet, engine: EngineAdapter, program: str,
    api_key: str | None = None,
) -> tuple[ServerSpec, EngineLaunch]:
    """Pure: settings + a valid model set (+ the API key read from its file) → the spec to
    run, plus the engine's render."""
    out_dir = rendered_dir(settings)
    paths = server_paths(settings, out_dir)
    launch = engine.render(models, paths, settings, api_key)
    srv = settings.server
    mounts: tuple[Mount, ...] = ()
    if srv.runtime is RuntimeKind.DOCKER:
        mounts = (
            Mount(str(srv.models_dir.resolve()), paths.models_dir, read_only=False),
            Mount(str(srv.model_config_file.resolve()), paths.model_config),
        )
        if launch.files:
            mounts += (Mount(str(out_dir.resolve()), paths.rendered_dir),)
    spec = ServerSpec(
        runtime=srv.runtime,
        engine=str(engine.kind),
        program=program,
        args=launch.args,
        env=launch.env,
        files=launch.files,
        mounts=mounts,
        listen_port=settings.endpoint.listen_port,
        publish_host=settings.endpoint.publish_host,
        publish_port=settings.endpoint.publish_port,
        gpus=settings.docker.gpus if srv.runtime is RuntimeKind.DOCKER else "none",
        revision=models.revision,
        models=models.names,
        memlock_unlimited=srv.runtime is RuntimeKind.DOCKER
        and any(e.mmlock for e in models.entries),
    )
    return spec, launch


def write_rendered(spec: ServerSpec, directory: Path) -> None:
    """Write the spec's rendered files atomically (the server may be reading the old ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in spec.files:
        tmp = directory / f".{f.name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if f.secret else 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(f.content)
        tmp.replace(directory / f.name)
