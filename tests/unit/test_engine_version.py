"""The engine version: parsed, compared, learnt from the setting or the running server, shown
in status, and followed by the lint rules without restarting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from daemonkit import Harness, make_settings

from supervisor.settings import Engine, SettingsError, load_settings
from supervisor.versions import Version, at_least


@pytest.mark.parametrize(("text", "version"), [
    ("v4.9.0", Version(4, 9, 0)), ("4.9.0-22-g82c191af", Version(4, 9, 0)),
    ("v3.10", Version(3, 10, 0)), (" v2.27.1 ", Version(2, 27, 1)),
    ("master", None), ("82c191af", None), ("", None), (None, None)])
def test_versions_are_read_from_what_engines_print(text: str | None,
                                                   version: Version | None) -> None:
    assert Version.parse(text) == version


def test_versions_compare_numerically_and_unknown_takes_the_callers_side() -> None:
    assert Version(3, 10) > Version(3, 9, 9)
    assert at_least(Version(4, 8, 0), 4, 8, unknown=False)
    assert not at_least(Version(4, 7, 9), 4, 8, unknown=True)
    assert at_least(None, 4, 8, unknown=True) and not at_least(None, 4, 8, unknown=False)


def test_a_setting_that_is_not_a_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[localai]\nversion = "latest"\n')
    with pytest.raises(SettingsError, match="not a version"):
        load_settings(path, required=True)


def localai_harness(tmp_path: Path, version: str | None = None) -> Harness:
    base = make_settings(tmp_path)
    settings = base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI}),
        "localai": base.localai.model_copy(update={"version": version})})
    h = Harness(tmp_path, settings)
    h.prober.answers["/version"] = (200, '{"version": "v4.9.0-22-g82c191af"}')
    return h


async def test_the_running_server_tells_its_version_and_lint_follows_without_a_restart(
        tmp_path: Path) -> None:
    h = localai_harness(tmp_path)
    assert h.daemon.status().engine_version is None
    await h.start()
    await h.running()
    await h.until(lambda: h.daemon.status().config.checks == 2, "the lint re-check")
    st = h.daemon.status()
    assert st.engine_version is not None
    assert (st.engine_version.version, st.engine_version.source.value,
            st.engine_version.reported) == ("v4.9.0", "server", "v4.9.0-22-g82c191af")
    # The boot's check, then one more for the lint rules of that version.
    assert st.config.checks == 2 and st.config.last_check is not None
    assert st.config.last_check.value == "unchanged"
    assert h.runtime.launched == ["t1"], "learning the version restarts nothing"
    await h.close()


async def test_a_setting_the_server_contradicts_is_reported_and_the_server_wins(
        tmp_path: Path) -> None:
    h = localai_harness(tmp_path, version="v4.1.0")
    st = h.daemon.status()
    assert st.engine_version is not None and st.engine_version.source.value == "setting"
    with structlog.testing.capture_logs() as logs:
        await h.start()
        await h.running()
        await h.settle()
    assert [e for e in logs if e["event"] == "engine.version_mismatch"], logs
    assert h.daemon.status().engine_version.version == "v4.9.0"  # type: ignore[union-attr]
    await h.close()
