"""The part of ``doctor`` that needs no running server: the config, the models dir, the host.

Blocking (reads files, asks NVML): the daemon runs it in a thread; ``supervisorctl doctor``
runs it directly when no daemon answers.
"""

from __future__ import annotations

import re
import resource
from dataclasses import replace

from . import doctor, gpumem
from .lint import context_for, footprint_bytes
from .modelconfig import validate
from .runtime import program_for, program_says, program_version
from .settings import Engine, RuntimeKind, Settings
from .versions import Version, VersionSource


def gpu_memory(settings: Settings) -> tuple[int | None, str]:
    """The GPU memory the fit rules count: the setting, else what NVML reports."""
    if settings.server.gpu_memory_gb:
        return int(settings.server.gpu_memory_gb * 1024**3), "server.gpu_memory_gb"
    total = gpumem.total_bytes()
    return (total, "NVML") if total else (None, "unknown")


def memlock_soft() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def offline_findings(settings: Settings, version: Version | None,
                     model: str | None = None) -> list[doctor.DoctorFinding]:
    """Config lint (for ``version``), config errors, and the host rules."""
    srv = settings.server
    gpu, source = gpu_memory(settings)
    ctx = context_for(settings, version)
    if ctx.gpu_memory_bytes is None and gpu is not None:
        ctx = replace(ctx, gpu_memory_bytes=gpu)
    v = validate(srv.model_config_file, srv.models_dir, ctx)
    found = doctor.from_problems(v.problems)
    if v.models is not None:
        sizes = {f.name: f.size for f in v.models.files}
        fits = [doctor.ModelFit(e.name, sizes.get(e.name), e.context_size,
                                footprint_bytes(sizes.get(e.name), e.context_size,
                                                v.ggufs.get(e.name)), bool(e.mmlock), e.mmap)
                for e in v.models.entries]
        host = doctor.HostFacts(
            engine=srv.engine, process_runtime=srv.runtime is RuntimeKind.PROCESS,
            single_active_backend=srv.single_active_backend, gateway=settings.gateway.enabled,
            gpu_memory_bytes=gpu, gpu_memory_source=source, memlock_soft_bytes=memlock_soft(),
            environment=settings.localai.environment if srv.engine is Engine.LOCALAI else {})
        found += doctor.host_rules(fits, host)
    if model is not None:
        found = [f for f in found if f.model in (model, None)]
    return found


# `llama-server --version`: "version: 11434 (6f1b2f1d)", or for a build outside git (the
# PyPI sdist) "version: 0.6.0-dev (build 0, commit unknown)".
_LLAMA_VERSION = re.compile(r"^version: (.+)$", re.MULTILINE)


def offline_version(settings: Settings) -> tuple[str, str] | None:
    """(version text, where it came from) without a running server."""
    if settings.server.engine is Engine.LOCALAI:
        if settings.localai.version:
            return settings.localai.version, VersionSource.SETTING.value
        found = program_version(settings)
        return (found[0], found[1].value) if found else None
    if settings.server.runtime is not RuntimeKind.PROCESS:
        return None
    from .engines import engine_for

    said = program_says([program_for(settings, engine_for(Engine.LLAMA_SERVER)), "--version"],
                        _LLAMA_VERSION)
    return (said, VersionSource.PROGRAM.value) if said else None


def offline_report(settings: Settings, model: str | None = None) -> doctor.DoctorReport:
    """Blocking: doctor without a daemon (no logs, no live state)."""
    found = offline_version(settings)
    version = Version.parse(found[0]) if found and settings.server.engine is Engine.LOCALAI \
        else None
    return doctor.DoctorReport(
        engine=settings.server.engine, engine_version=found[0] if found else None,
        version_source=found[1] if found else None, live=False,
        findings=offline_findings(settings, version, model))
