"""Probes: ask the server whether it is alive and lists every configured model.

A probe only observes and reports a ``ProbeResult``; what a failure means is decided by the
policy in the daemon loop. Every request has a deadline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from .engines import EngineAdapter
from .policy import Probe, ProbeResult


@dataclass(frozen=True)
class ModelsSeen:
    """What the readiness probe learned: each listed model and its load state, if known."""

    models: dict[str, str | None]


class Prober:
    def __init__(self, base_url: str, engine: EngineAdapter, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._engine = engine
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def liveness(self, instance: str) -> ProbeResult:
        url = self._base + self._engine.liveness_path
        try:
            async with self._http().get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return ProbeResult(instance, Probe.LIVENESS, True)
                return ProbeResult(instance, Probe.LIVENESS, False,
                                   f"GET {self._engine.liveness_path}: HTTP {resp.status}")
        except TimeoutError:
            return ProbeResult(instance, Probe.LIVENESS, False,
                               f"GET {self._engine.liveness_path}: no answer within "
                               f"{self._timeout.total:g}s")
        except aiohttp.ClientError as exc:
            return ProbeResult(instance, Probe.LIVENESS, False,
                               f"GET {self._engine.liveness_path}: {exc}")

    async def readiness(
        self, instance: str, expected: tuple[str, ...]
    ) -> tuple[ProbeResult, ModelsSeen]:
        path = self._engine.readiness_path
        try:
            async with self._http().get(self._base + path) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return (ProbeResult(instance, Probe.READINESS, False,
                                        f"GET {path}: HTTP {resp.status}"), ModelsSeen({}))
                body = json.loads(raw)
        except TimeoutError:
            return (ProbeResult(instance, Probe.READINESS, False,
                                f"GET {path}: no answer within {self._timeout.total:g}s"),
                    ModelsSeen({}))
        except (aiohttp.ClientError, ValueError) as exc:
            return ProbeResult(instance, Probe.READINESS, False, f"GET {path}: {exc}"), ModelsSeen(
                {})
        seen = self._engine.listed_models(body)
        missing = [m for m in expected if m not in seen]
        failed = [m for m, state in seen.items() if m in expected and state == "failed"]
        if missing:
            return (ProbeResult(instance, Probe.READINESS, False,
                                f"GET {path}: not listed: {', '.join(missing)}"), ModelsSeen(seen))
        if failed:
            return (ProbeResult(instance, Probe.READINESS, False,
                                f"GET {path}: failed to load: {', '.join(failed)}"),
                    ModelsSeen(seen))
        return (ProbeResult(instance, Probe.READINESS, True,
                            f"{len(expected)} model(s) listed"), ModelsSeen(seen))
