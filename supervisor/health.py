"""Probes: ask the server whether it is alive and lists every configured model.

A probe only observes and reports a ``ProbeResult``; what a failure means is decided by the
policy in the daemon loop. Every request has a deadline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from .engines import Activity, Call, EngineAdapter
from .policy import ProbeResult
from .vocab import LoadState, ProbeKind


@dataclass(frozen=True)
class ModelsSeen:
    """What the readiness probe learned: each listed model and its load state, if known."""

    models: dict[str, LoadState | None]
    # Which models are loaded, when the readiness answer already says (llama-server /models).
    loaded: dict[str, LoadState] | None = None


def loaded_names(loaded: dict[str, LoadState] | None) -> list[str]:
    return [k for k, v in (loaded or {}).items() if v is LoadState.LOADED]


class Probing(Protocol):
    """What the owners and the effect worker ask of the server over HTTP (a fake in tests)."""

    async def liveness(self, instance: str) -> ProbeResult: ...

    async def readiness(self, instance: str, expected: tuple[str, ...]
                        ) -> tuple[ProbeResult, ModelsSeen]: ...

    async def call(self, call: Call, timeout: float) -> tuple[int, str]: ...

    def set_api_key(self, key: str | None) -> None: ...

    async def loaded(self) -> dict[str, LoadState] | None: ...

    async def activity(self, loaded: list[str], timeout: float | None = None) -> Activity: ...

    async def close(self) -> None: ...


# How long the engine's version question waits for an answer.
VERSION_TIMEOUT = 5.0


async def ask_version(prober: Probing, engine: EngineAdapter) -> str | None:
    """What the running engine says its version is (None: no usable answer)."""
    status, text = await prober.call(engine.version_call(), VERSION_TIMEOUT)
    if status != 200:
        return None
    try:
        return engine.version(json.loads(text))
    except ValueError:
        return None


class Prober:
    def __init__(self, base_url: str, engine: EngineAdapter, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._engine = engine
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}

    def set_api_key(self, key: str | None) -> None:
        """Every request from now on carries it (LocalAI answers 401 without it)."""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

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
            async with self._http().get(url, headers=self._headers) as resp:
                await resp.read()
                if resp.status == 200:
                    return ProbeResult(instance, ProbeKind.LIVENESS, True)
                return ProbeResult(instance, ProbeKind.LIVENESS, False,
                                   f"GET {self._engine.liveness_path}: HTTP {resp.status}")
        except TimeoutError:
            return ProbeResult(instance, ProbeKind.LIVENESS, False,
                               f"GET {self._engine.liveness_path}: no answer within "
                               f"{self._timeout.total:g}s")
        except aiohttp.ClientError as exc:
            return ProbeResult(instance, ProbeKind.LIVENESS, False,
                               f"GET {self._engine.liveness_path}: {exc}")

    async def readiness(
        self, instance: str, expected: tuple[str, ...]
    ) -> tuple[ProbeResult, ModelsSeen]:
        path = self._engine.readiness_path
        try:
            async with self._http().get(self._base + path, headers=self._headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return (ProbeResult(instance, ProbeKind.READINESS, False,
                                        f"GET {path}: HTTP {resp.status}"), ModelsSeen({}))
                body = json.loads(raw)
        except TimeoutError:
            return (ProbeResult(instance, ProbeKind.READINESS, False,
                                f"GET {path}: no answer within {self._timeout.total:g}s"),
                    ModelsSeen({}))
        except (aiohttp.ClientError, ValueError) as exc:
            return (ProbeResult(instance, ProbeKind.READINESS, False, f"GET {path}: {exc}"),
                    ModelsSeen({}))
        seen = self._engine.listed_models(body)
        loaded_call = self._engine.loaded_call()
        loaded = (self._engine.loaded_models(body)
                  if (loaded_call.method, loaded_call.path) == ("GET", path) else None)
        # A model that failed to load is the per-model probes' business (restart that model,
        # not the server); readiness only asks that every configured model is served.
        missing = [m for m in expected if m not in seen]
        if missing:
            return (ProbeResult(instance, ProbeKind.READINESS, False,
                                f"GET {path}: not listed: {', '.join(missing)}"),
                    ModelsSeen(seen, loaded))
        return (ProbeResult(instance, ProbeKind.READINESS, True,
                            f"{len(expected)} model(s) listed"), ModelsSeen(seen, loaded))

    async def call(self, call: Call, timeout: float) -> tuple[int, str]:
        """Send one described request; (0, reason) when there was no HTTP answer."""
        try:
            async with self._http().request(
                call.method, self._base + call.path, json=call.body, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                return resp.status, (await resp.read()).decode("utf-8", "replace")
        except TimeoutError:
            return 0, f"no answer within {timeout:g}s"
        except aiohttp.ClientError as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    async def loaded(self) -> dict[str, LoadState] | None:
        status, text = await self.call(self._engine.loaded_call(), self._timeout.total or 5)
        if status != 200:
            return None
        try:
            return self._engine.loaded_models(json.loads(text))
        except ValueError:
            return None

    async def activity(self, loaded: list[str], timeout: float | None = None) -> Activity:
        wait = timeout or self._timeout.total or 5
        answers = [await self.call(c, wait) for c in self._engine.activity_calls(loaded)]
        return self._engine.activity(answers)
