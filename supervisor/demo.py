"""The embedded default: llama-server as a child process on two tiny generated models.

A newcomer runs one command and sees the supervisor start a real LLM server, probe it, and
answer a chat completion — no Docker, no downloads (the models are made on the spot).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from . import logs
from .daemon import Daemon
from .policy import State
from .render import render_status
from .settings import (
    Engine,
    GatewaySection,
    HealthSection,
    LogFormat,
    RuntimeKind,
    ServerSection,
    Settings,
    SupervisorSection,
)
from .surfaces import start_surfaces

DEMO_MODELS = {"tiny-a": 1, "tiny-b": 2}

CONFIG_TEMPLATE = """\
# Written by `localai-supervisor demo`. Edit it while the demo runs: the supervisor
# validates the change and restarts the server only if the result is valid and different.
"""


def _free_port() -> int:
    """A loopback port the kernel says is free now (for the server behind the gateway)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(base: Path, port: int, status_port: int) -> Settings:
    """Write the demo's models and config.yaml (once) and return its settings."""
    from .tinygguf import write_tiny_llama

    models_dir = base / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    lines = [CONFIG_TEMPLATE]
    for name, seed in DEMO_MODELS.items():
        target = models_dir / f"{name}.gguf"
        if not target.exists():
            tmp = models_dir / f".{name}.gguf.part"
            write_tiny_llama(tmp, seed=seed, name=name, context_length=4096)
            tmp.replace(target)
        lines.append(f"- name: {name}\n  context_size: 2048\n  parameters:\n"
                     f"    model: {name}.gguf\n    max_tokens: 64\n")
    config = base / "config.yaml"
    if not config.exists():
        config.write_text("\n".join(lines))
    return Settings(
        supervisor=SupervisorSection(
            state_dir=base / "state",
            control_socket=base / "control.sock",
            status_api=f"127.0.0.1:{status_port}",
            log_format=LogFormat.AUTO,
        ),
        server=ServerSection(
            engine=Engine.LLAMA_SERVER,
            runtime=RuntimeKind.PROCESS,
            model_config_file=config,
            models_dir=models_dir,
            listen_host="127.0.0.1",
            listen_port=port,
            publish_host="127.0.0.1",
            publish_port=port,
            threads=min(4, os.cpu_count() or 1),
            parallel=1,
            startup_timeout=120,
        ),
        health=HealthSection(interval=2.0, timeout=5.0),
        # Clients use the gateway on the demo's port; the server sits behind it on loopback.
        gateway=GatewaySection(listen=f"127.0.0.1:{port}", upstream_port=_free_port()),
    )


async def _chat(url: str, model: str) -> str:
    body = {"model": model, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say hello."}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http, \
            http.post(f"{url}/v1/chat/completions", json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            return f"HTTP {resp.status}: {json.dumps(data)[:200]}"
        text: str = data["choices"][0]["message"]["content"]
        return text


async def _main(settings: Settings, once: bool) -> int:
    daemon = Daemon(settings)
    runner = asyncio.create_task(daemon.run(servers=start_surfaces))
    deadline = time.monotonic() + settings.server.startup_timeout
    while (status := daemon.status()).state is not State.RUNNING:
        if runner.done() or time.monotonic() > deadline:
            print(f"demo: server did not become ready: {status.reason}", file=sys.stderr)
            if not runner.done():
                os.kill(os.getpid(), signal.SIGTERM)
            await runner
            return 1
        await asyncio.sleep(0.2)
    url = f"http://{settings.gateway.listen}"
    print("\n=== supervisorctl status ===", flush=True)
    print(render_status(status, tty=True), flush=True)
    for model in DEMO_MODELS:
        started = time.monotonic()
        reply = await _chat(url, model)
        print(f"\n=== chat completion from {model} ({time.monotonic() - started:.2f}s; random "
              f"weights, so the text is gibberish) ===\n{reply!r}", flush=True)
    print(f"\nThe gateway answers at {url}/v1/chat/completions (the server behind it: "
          f"{settings.probe_base_url}); status at "
          f"http://{settings.supervisor.status_api}/status; control socket "
          f"{settings.supervisor.control_socket} (supervisorctl -s … status).", flush=True)
    if once:
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        print("Running until Ctrl-C.", flush=True)
    return await runner


def run_demo(base: Path | None, port: int, status_port: int, *, once: bool) -> int:
    base = base or Path(os.path.expanduser("~/.local/state/localai-supervisor-demo"))
    settings = prepare(base, port, status_port)
    logs.configure(settings.supervisor.log_format, "info")
    print(f"demo: models and config in {base}", flush=True)
    return asyncio.run(_main(settings, once))
