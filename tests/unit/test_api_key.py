"""localai.api_key_file: LocalAI gets the key in api_keys.json (0600, in LOCALAI_CONFIG_DIR),
never in its environment or arguments (`docker inspect` shows those); every probe sends it;
nothing prints it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from daemonkit import Harness, make_settings

from supervisor.cli import _render
from supervisor.configuration import read_api_key
from supervisor.settings import Engine, Settings
from supervisor.spec import write_rendered

KEY = "sk-test-3f9a7c"


def with_key(tmp_path: Path) -> Settings:
    (tmp_path / "key").write_text(f"  {KEY}\n")
    base = make_settings(tmp_path)
    return base.model_copy(update={
        "server": base.server.model_copy(update={"engine": Engine.LOCALAI}),
        "localai": base.localai.model_copy(update={"api_key_file": tmp_path / "key"})})


def test_the_key_file_is_read_and_its_errors_never_show_the_key(tmp_path: Path) -> None:
    assert read_api_key(None) is None
    (tmp_path / "k").write_text(f"{KEY}\n")
    assert read_api_key(tmp_path / "k") == KEY
    with pytest.raises(ValueError, match="cannot read it"):
        read_api_key(tmp_path / "missing")
    (tmp_path / "k").write_text(f"{KEY} {KEY}\n")
    with pytest.raises(ValueError, match="one key") as err:
        read_api_key(tmp_path / "k")
    assert KEY not in str(err.value)


async def test_localai_gets_the_key_in_a_file_and_the_probes_send_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, with_key(tmp_path))
    await h.start()
    await h.running()
    assert h.prober.api_key == KEY
    spec = h.daemon.config.spec
    assert spec is not None
    env = dict(spec.env)
    assert KEY not in json.dumps(env) and KEY not in " ".join(spec.args)
    keys = next(f for f in spec.files if f.name == "api_keys.json")
    assert keys.secret and json.loads(keys.content) == [KEY]
    rendered = Path(env["LOCALAI_CONFIG_DIR"]) / "api_keys.json"
    assert json.loads(rendered.read_text()) == [KEY]
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
    await h.close()


def test_write_rendered_keeps_secrets_0600(tmp_path: Path) -> None:
    from supervisor.engines.base import RenderedFile
    from supervisor.spec import ServerSpec

    spec = ServerSpec(runtime="process", engine="localai", program="local-ai", args=(),  # type: ignore[arg-type]
                      env=(), files=(RenderedFile("a.json", "[]", secret=True),
                                     RenderedFile("b.ini", "x")), mounts=(), listen_port=1,
                      publish_host="", publish_port=1, gpus="none", revision="r", models=())
    write_rendered(spec, tmp_path)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b.ini").stat().st_mode) & 0o044


def test_render_prints_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _render(with_key(tmp_path)) == 0
    out = capsys.readouterr().out
    assert KEY not in out and "(secret: not shown)" in out
