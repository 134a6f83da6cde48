"""The effective server spec and what each engine renders into it."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.engines import RenderedFile, ServerPaths, engine_for
from supervisor.engines.llamaserver import (
    PRESET_NAME,
    LlamaServerEngine,
    dropped_fields,
    preset_options,
    render_preset,
)
from supervisor.engines.localai import DEFAULT_ENV, LocalAIEngine
from supervisor.modelconfig import ModelEntry, ModelSet, load_model_set
from supervisor.settings import Engine, RuntimeKind, Settings
from supervisor.spec import (
    Mount,
    ServerSpec,
    build_spec,
    rendered_dir,
    server_paths,
    write_rendered,
)
from supervisor.tinygguf import write_tiny_llama

CONFIG = """\
- name: tiny-a
  context_size: 2048
  parameters:
    model: tiny-a.gguf
- name: tiny-b
  parameters:
    model: sub/tiny-b.gguf
"""

LOCALAI_DEFAULT_ENV = {
    "LOCALAI_THREADS": "8",
    "LOCALAI_SINGLE_ACTIVE_BACKEND": "true",
    "LLAMACPP_PARALLEL": "8",
    "PYTHON_GRPC_MAX_WORKERS": "8",
    "LOCALAI_LOG_LEVEL": "info",
    "LOCALAI_PARALLEL_REQUESTS": "true",
}


@dataclass(frozen=True)
class Layout:
    root: Path
    config: Path
    models: Path
    state: Path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    write_tiny_llama(models / "tiny-a.gguf", seed=1, name="tiny-a")
    write_tiny_llama(models / "sub" / "tiny-b.gguf", seed=2, name="tiny-b")
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    return Layout(tmp_path, config, models, tmp_path / "state")


def make_settings(layout: Layout, engine: str = "localai", runtime: str = "docker",
                  **sections: Any) -> Settings:
    server = {"engine": engine, "runtime": runtime, "model_config_file": layout.config,
              "models_dir": layout.models, **sections.pop("server", {})}
    # The server's own addresses, as without the gateway (the gateway's tests say otherwise).
    sections.setdefault("gateway", {"enabled": False})
    return Settings(supervisor={"state_dir": layout.state}, server=server, **sections)


def build(layout: Layout, engine: str = "localai", runtime: str = "docker",
          **sections: Any) -> ServerSpec:
    settings = make_settings(layout, engine, runtime, **sections)
    models = load_model_set(layout.config, layout.models)
    adapter = engine_for(settings.server.engine)
    program = settings.docker.image if runtime == "docker" else "/usr/bin/" + engine
    return build_spec(settings, models, adapter, program)[0]


def preset_of(spec: ServerSpec) -> str:
    (preset,) = spec.files
    assert preset.name == PRESET_NAME
    return preset.content


# ---- build_spec -------------------------------------------------------------------------


def test_docker_localai_spec_reproduces_the_hand_run_container(layout: Layout) -> None:
    spec = build(layout)
    assert spec.runtime is RuntimeKind.DOCKER
    assert spec.engine == "localai"
    assert spec.program == "localai"
    assert spec.args == (
        "run", "--config-file", "/localai/config.yaml", "--models-path", "/localai/model",
        "--address", "0.0.0.0:40080",
    )
    assert dict(spec.env) == LOCALAI_DEFAULT_ENV
    assert list(spec.env) == sorted(spec.env)
    assert spec.files == ()
    assert spec.mounts == (
        Mount(str(layout.models.resolve()), "/localai/model", read_only=False),
        Mount(str(layout.config.resolve()), "/localai/config.yaml", read_only=True),
    )
    assert (spec.listen_port, spec.publish_host, spec.publish_port) == (40080, "0.0.0.0", 40080)
    assert spec.gpus == "all"
    assert spec.models == ("tiny-a", "tiny-b")
    assert spec.revision == load_model_set(layout.config, layout.models).revision


def test_docker_llama_server_spec_mounts_the_rendered_preset(layout: Layout) -> None:
    spec = build(layout, engine="llama-server")
    assert spec.engine == "llama-server"
    assert spec.mounts == (
        Mount(str(layout.models.resolve()), "/localai/model", read_only=False),
        Mount(str(layout.config.resolve()), "/localai/config.yaml", read_only=True),
        Mount(str((layout.state / "rendered").resolve()), "/localai-supervisor", read_only=True),
    )
    assert spec.args[:2] == ("--models-preset", "/localai-supervisor/models-preset.ini")
    preset = preset_of(spec)
    assert "model = /localai/model/tiny-a.gguf" in preset
    assert "model = /localai/model/sub/tiny-b.gguf" in preset


def test_docker_container_paths_follow_settings(layout: Layout) -> None:
    spec = build(layout, docker={"container_models_dir": "/models",
                                 "container_model_config": "/cfg/models.yaml", "gpus": "0"})
    assert spec.args[1:5] == ("--config-file", "/cfg/models.yaml", "--models-path", "/models")
    assert [m.target for m in spec.mounts] == ["/models", "/cfg/models.yaml"]
    assert spec.gpus == "0"


def test_process_llama_server_spec_uses_host_paths(layout: Layout) -> None:
    spec = build(layout, engine="llama-server", runtime="process",
                 server={"listen_host": "127.0.0.1", "listen_port": 8081})
    rendered = (layout.state / "rendered").resolve()
    assert spec.runtime is RuntimeKind.PROCESS
    assert spec.program == "/usr/bin/llama-server"
    assert spec.mounts == ()
    assert spec.gpus == "none"
    assert spec.args == (
        "--models-preset", f"{rendered}/{PRESET_NAME}",
        "--models-max", "1",
        "--host", "127.0.0.1",
        "--port", "8081",
        "--threads", "8",
        "--metrics",
    )
    assert f"model = {layout.models.resolve()}/tiny-a.gguf" in preset_of(spec)


def test_process_localai_spec_uses_host_paths(layout: Layout) -> None:
    spec = build(layout, runtime="process")
    assert spec.args == (
        "run", "--config-file", str(layout.config.resolve()),
        "--models-path", str(layout.models.resolve()), "--address", "0.0.0.0:40080",
    )
    assert spec.mounts == ()


def test_server_paths_and_rendered_dir(layout: Layout) -> None:
    docker = make_settings(layout)
    assert rendered_dir(docker) == layout.state / "rendered"
    assert server_paths(docker, rendered_dir(docker)) == ServerPaths(
        "/localai/model", "/localai/config.yaml", "/localai-supervisor")
    process = make_settings(layout, runtime="process")
    assert server_paths(process, layout.root / "r") == ServerPaths(
        str(layout.models.resolve()), str(layout.config.resolve()),
        str((layout.root / "r").resolve()))


# ---- the digest -------------------------------------------------------------------------


def test_digest_is_stable_for_equal_inputs(layout: Layout) -> None:
    a, b = build(layout), build(layout)
    assert a == b
    assert a.digest() == b.digest()
    assert len(a.digest()) == 16
    int(a.digest(), 16)


def test_digest_ignores_a_touched_model_file(layout: Layout) -> None:
    before = build(layout, engine="llama-server")
    st = (layout.models / "tiny-a.gguf").stat()
    os.utime(layout.models / "tiny-a.gguf", ns=(st.st_atime_ns + 10**12, st.st_mtime_ns + 10**12))
    assert build(layout, engine="llama-server").digest() == before.digest()


@pytest.mark.parametrize(
    "sections",
    [
        {"localai": {"extra_args": ["--debug"]}},
        {"localai": {"environment": {"LOCALAI_LOG_LEVEL": "debug"}}},
        {"server": {"threads": 4}},
        {"server": {"single_active_backend": False}},
        {"server": {"publish_port": 40090}},
        {"server": {"listen_port": 40090}},
        {"docker": {"image": "localai:v3"}},
        {"docker": {"gpus": "none"}},
    ],
    ids=repr,
)
def test_digest_changes_with_settings_that_change_the_server(layout: Layout,
                                                             sections: dict[str, Any]) -> None:
    assert build(layout, **sections).digest() != build(layout).digest()


def test_digest_changes_when_a_model_file_changes(layout: Layout) -> None:
    before = build(layout)
    target = layout.models / "tiny-a.gguf"
    new = write_tiny_llama(layout.root / "new.gguf", seed=3, name="tiny-a")
    assert new.stat().st_size == target.stat().st_size
    with target.open("r+b") as fh:  # same inode, same size, new content
        fh.write(new.read_bytes())
    after = build(layout)
    assert after.revision != before.revision
    assert after.digest() != before.digest()


def test_digest_changes_when_the_rendered_preset_changes(layout: Layout) -> None:
    before = build(layout, engine="llama-server")
    layout.config.write_text(CONFIG.replace("context_size: 2048", "context_size: 4096"))
    after = build(layout, engine="llama-server")
    assert "ctx-size = 4096" in preset_of(after)
    assert after.digest() != before.digest()


@pytest.mark.parametrize(
    "change",
    [
        {"args": ("run", "--debug")},
        {"env": (("A", "1"),)},
        {"files": (RenderedFile(PRESET_NAME, "version = 1\n[x]\n"),)},
        {"revision": "other"},
        {"mounts": ()},
        {"models": ("tiny-a",)},
        {"program": "localai:other"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_digest_covers_every_field(layout: Layout, change: dict[str, Any]) -> None:
    spec = build(layout)
    assert replace(spec, **change).digest() != spec.digest()


def test_write_rendered_writes_every_file_and_leaves_no_temp_files(layout: Layout) -> None:
    spec = build(layout, engine="llama-server")
    out = layout.root / "out"
    write_rendered(spec, out)
    write_rendered(spec, out)  # overwriting is fine
    assert sorted(p.name for p in out.iterdir()) == [PRESET_NAME]
    assert (out / PRESET_NAME).read_text() == preset_of(spec)


# ---- LocalAI ------------------------------------------------------------------------------


def test_localai_settings_flow_into_env_and_args(layout: Layout) -> None:
    spec = build(
        layout,
        server={"threads": 4, "parallel": 2, "single_active_backend": False,
                "listen_host": "127.0.0.1", "listen_port": 9000},
        localai={"environment": {"LOCALAI_LOG_LEVEL": "debug"},
                 "extra_args": ["--f16", "--debug"]},
    )
    # [localai] environment is merged over the engine's defaults, not instead of them.
    assert dict(spec.env) == {
        "LOCALAI_THREADS": "4",
        "LOCALAI_SINGLE_ACTIVE_BACKEND": "false",
        "LLAMACPP_PARALLEL": "2",
        "LOCALAI_LOG_LEVEL": "debug",
        "LOCALAI_PARALLEL_REQUESTS": "true",
        "PYTHON_GRPC_MAX_WORKERS": "8",
    }
    assert spec.args[-4:] == ("--address", "127.0.0.1:9000", "--f16", "--debug")


def test_localai_environment_overrides_derived_values(layout: Layout) -> None:
    spec = build(layout, localai={"environment": {"LOCALAI_THREADS": "2"}})
    assert dict(spec.env)["LOCALAI_THREADS"] == "2"


def test_localai_default_env_is_under_the_settings_environment(layout: Layout) -> None:
    assert set(DEFAULT_ENV) <= set(LOCALAI_DEFAULT_ENV)
    assert {k: LOCALAI_DEFAULT_ENV[k] for k in DEFAULT_ENV} == DEFAULT_ENV
    spec = build(layout, localai={"environment": {"python_grpc_max_workers": "2", "x_extra": "1"}})
    env = dict(spec.env)
    assert env == {**LOCALAI_DEFAULT_ENV, "PYTHON_GRPC_MAX_WORKERS": "2", "X_EXTRA": "1"}


def test_localai_listed_models() -> None:
    engine = LocalAIEngine()
    body = {"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}, "junk",
                                       {"object": "model"}]}
    assert engine.listed_models(body) == {"a": None, "b": None}
    assert engine.listed_models({"data": []}) == {}
    assert engine.listed_models({"data": "nope"}) == {}
    assert engine.listed_models(["a"]) == {}
    assert engine.listed_models(None) == {}


def test_engine_for_and_probe_paths() -> None:
    localai, llama = engine_for(Engine.LOCALAI), engine_for(Engine.LLAMA_SERVER)
    assert isinstance(localai, LocalAIEngine)
    assert isinstance(llama, LlamaServerEngine)
    assert (localai.liveness_path, localai.readiness_path) == ("/readyz", "/v1/models")
    assert (llama.liveness_path, llama.readiness_path) == ("/health", "/models")
    assert (localai.default_binary, llama.default_binary) == ("local-ai", "llama-server")


# ---- llama-server -----------------------------------------------------------------------


def entry(**fields: Any) -> ModelEntry:
    return ModelEntry.model_validate({"name": "m", **fields})


def model_set(*entries: ModelEntry) -> ModelSet:
    return ModelSet(Path("/etc/localai/config.yaml"), entries, (), "rev123")


def test_preset_options_map_localai_fields_in_a_stable_order() -> None:
    e = entry(
        parameters={"model": "llama/q4.gguf", "temperature": 0.2, "top_k": 40, "top_p": 0.9,
                    "seed": -1, "max_tokens": 512},
        context_size=8192, gpu_layers=99, threads=6, mmap=False, mmlock=True,
        embeddings=True,
    )
    e = entry(**{**e.model_dump(exclude_none=True),
                 "parameters": {**e.parameters.model_dump(exclude_none=True), "batch": 256,
                                "repeat_penalty": 1.1},
                 "flash_attention": "auto", "mmproj": "llama/mmproj.gguf",
                 "tensor_split": "3,1"})
    assert list(preset_options(e, "/localai/model/").items()) == [
        ("model", "/localai/model/llama/q4.gguf"),
        ("ctx-size", "8192"),
        ("n-gpu-layers", "99"),
        ("threads", "6"),
        ("batch-size", "256"),
        ("temp", "0.2"),
        ("top-k", "40"),
        ("top-p", "0.9"),
        ("seed", "-1"),
        ("n-predict", "512"),
        ("repeat-penalty", "1.1"),
        ("flash-attn", "auto"),
        ("mmproj", "/localai/model/llama/mmproj.gguf"),
        ("tensor-split", "3,1"),
        ("no-mmap", "true"),
        ("mlock", "true"),
        ("embeddings", "true"),
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {}),
        ({"parameters": {"model": "a.gguf"}}, {"model": "/m/a.gguf"}),
        ({"mmap": True, "mmlock": False, "embeddings": False}, {}),
        ({"gpu_layers": 0}, {"n-gpu-layers": "0"}),
        ({"parameters": {"batch": 64}}, {"batch-size": "64"}),
        # Top-level batch is not a LocalAI key (LocalAI ignores it): only parameters.batch.
        ({"batch": 128, "parameters": {"batch": 64}}, {"batch-size": "64"}),
        ({"batch": 128}, {}),
        ({"flash_attention": True}, {"flash-attn": "on"}),
        ({"flash_attention": False}, {"flash-attn": "off"}),
        ({"flash_attention": "on"}, {"flash-attn": "on"}),
        ({"mmproj": ""}, {}),
        ({"mmproj": "p.gguf"}, {"mmproj": "/m/p.gguf"}),
        ({"parameters": {"temperature": 0}}, {"temp": "0.0"}),
        # The backend options that decide how context_size is split per request, so the lint
        # and the gateway count with what runs (the last one of a name wins, as in LocalAI).
        ({"options": ["parallel:2"]}, {"parallel": "2"}),
        ({"options": ["n_parallel:3", "parallel:4"]}, {"parallel": "4"}),
        ({"options": ["kv_unified:true", "context_shift:false"]},
         {"kv-unified": "true", "context-shift": "false"}),
        ({"options": ["kv_unified", "context_shift:off"]},
         {"kv-unified": "true", "context-shift": "false"}),
        ({"options": ["parallel:0", "parallel:x", "kv_unified:maybe", "use_jinja:true"]}, {}),
        # Read with LocalAI's own words and alias, as the lint reads them.
        ({"options": ["unified_kv:enabled", "context_shift:disabled", "parallel:2",
                      "parallel:0"]}, {"kv-unified": "true", "context-shift": "false"}),
    ],
    ids=repr,
)
def test_preset_options_cases(fields: dict[str, Any], expected: dict[str, str]) -> None:
    assert preset_options(entry(**fields), "/m") == expected


def test_render_preset_text() -> None:
    text = render_preset(
        model_set(entry(name="tiny-a", context_size=2048, parameters={"model": "a.gguf"}),
                  entry(name="tiny-b", mmap=False)),
        "/localai/model",
    )
    assert text == (
        "; rendered by localai-supervisor from /etc/localai/config.yaml\n"
        "; revision rev123\n"
        "version = 1\n"
        "\n"
        "[tiny-a]\n"
        "model = /localai/model/a.gguf\n"
        "ctx-size = 2048\n"
        "\n"
        "[tiny-b]\n"
        "no-mmap = true\n"
    )


@pytest.mark.parametrize(
    "name", ["a]b", "a[b", "a\nb", "evil\n[other]", "a;b", "a#b", "a\rb"], ids=repr)
def test_render_preset_rejects_names_that_break_the_ini(name: str) -> None:
    with pytest.raises(ValueError, match="INI section"):
        render_preset(model_set(entry(name=name)), "/m")


@pytest.mark.parametrize(
    "fields",
    [
        {"parameters": {"model": "a.gguf\nmlock = true"}},
        {"parameters": {"model": "a[1].gguf"}},
        {"parameters": {"model": "a;b.gguf"}},
        {"parameters": {"model": "a#b.gguf"}},
        {"parameters": {"model": "a=b.gguf"}},
        {"parameters": {"model": "a.gguf "}},
        {"parameters": {"model": "a.gguf\r"}},
    ],
    ids=repr,
)
def test_preset_values_that_break_the_ini_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="INI preset"):
        render_preset(model_set(entry(**fields)), "/m")


@pytest.mark.parametrize(
    ("single_active", "models_max", "expected"),
    [(True, None, "1"), (False, None, "4"), (True, 2, "2"), (False, 3, "3")],
)
def test_models_max(layout: Layout, single_active: bool, models_max: int | None,
                    expected: str) -> None:
    spec = build(layout, engine="llama-server",
                 server={"single_active_backend": single_active},
                 llama_server={"models_max": models_max})
    i = spec.args.index("--models-max")
    assert spec.args[i + 1] == expected


def test_llama_server_env_and_extra_args(layout: Layout) -> None:
    spec = build(layout, engine="llama-server",
                 llama_server={"environment": {"Z": "1", "A": "2"}, "extra_args": ["--jinja"]})
    assert spec.env == (("A", "2"), ("Z", "1"))
    assert spec.args[-1] == "--jinja"


def test_llama_server_render_reports_dropped_fields(layout: Layout) -> None:
    layout.config.write_text(CONFIG + "  template:\n    chat: '{{.Input}}'\n  f16: true\n")
    settings = make_settings(layout, engine="llama-server")
    models = load_model_set(layout.config, layout.models)
    _, launch = build_spec(settings, models, LlamaServerEngine(), "llama-server")
    assert launch.dropped == (("tiny-b", ("f16", "template")),)


@pytest.mark.parametrize(
    ("fields", "dropped"),
    [
        ({}, ()),
        ({"context_size": 10, "mmap": False}, ()),
        ({"template": {"chat": "x"}, "stopwords": ["</s>"]}, ("stopwords", "template")),
        ({"batch": 8}, ("batch",)),
        ({"parameters": {"model": "a.gguf", "batch": 8, "repeat_penalty": 1.1}}, ()),
        ({"parameters": {"mirostat": 2, "typical_p": 0.5}},
         ("parameters.mirostat", "parameters.typical_p")),
        ({"flash_attention": True, "mmproj": "p.gguf", "tensor_split": "1,1"}, ()),
        ({"template": {"use_tokenizer_template": True}, "options": ["parallel:2"]},
         ("template",)),
        ({"options": ["parallel:x", "kv_unified:true", "use_jinja:true", "use_jinja:false"]},
         ("options.parallel", "options.use_jinja")),
        ({"options": ["parallel:0", "unified_kv:on", "context_shift:maybe"]},
         ("options.context_shift", "options.parallel")),
        ({"cutstrings": ["x"], "system_prompt": "be nice"}, ("cutstrings", "system_prompt")),
        ({"backend": "llama-cpp"}, ()),
        ({"backend": "llama"}, ()),
        ({"backend": "llama.cpp"}, ()),
        ({"backend": "whisper"}, ("backend=whisper",)),
        ({"backend": "diffusers", "f16": True}, ("f16", "backend=diffusers")),
    ],
    ids=repr,
)
def test_dropped_fields(fields: dict[str, Any], dropped: tuple[str, ...]) -> None:
    assert dropped_fields(entry(**fields)) == dropped


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"mmproj": "mmproj-f16.gguf"}, "mmproj"),
        ({"flash_attention": True}, "flash"),
        ({"tensor_split": "1,1"}, "tensor"),
        ({"parameters": {"repeat_penalty": 1.1}}, "repeat"),
    ],
    ids=lambda v: str(v),
)
def test_unmapped_fields_are_rendered_or_reported(fields: dict[str, Any], key: str) -> None:
    e = entry(**fields)
    carried = any(key in k for k in preset_options(e, "/m"))
    reported = any(key in d for d in dropped_fields(e))
    assert carried or reported


def test_llama_server_listed_models_with_load_state() -> None:
    body = {
        "data": [
            {"id": "loaded", "status": {"value": "loaded"}},
            {"id": "idle", "status": {"value": "unloaded"}},
            {"id": "loading", "status": {"value": "loading", "args": ["llama-server"]}},
            {"id": "broken", "status": {"value": "unloaded", "failed": True, "exit_code": 1}},
            {"id": "ok-again", "status": {"value": "loaded", "failed": False}},
            {"id": "no-status"},
            {"id": "odd-status", "status": "loaded"},
            {"object": "model"},
            "junk",
        ]
    }
    assert LlamaServerEngine().listed_models(body) == {
        "loaded": "loaded",
        "idle": "unloaded",
        "loading": "loading",
        "broken": "failed",
        "ok-again": "loaded",
        "no-status": None,
        "odd-status": None,
    }


@pytest.mark.parametrize("body", [None, [], {"data": None}, {"models": []}, "x"], ids=repr)
def test_llama_server_listed_models_on_unexpected_bodies(body: Any) -> None:
    assert LlamaServerEngine().listed_models(body) == {}


@pytest.mark.parametrize("runtime", ["docker", "process"])
def test_behind_the_gateway_the_server_is_reachable_on_loopback_only(
        layout: Layout, runtime: str) -> None:
    spec = build(layout, "llama-server", runtime, gateway={"upstream_port": 40099})
    assert (spec.publish_host, spec.publish_port) == ("127.0.0.1", 40099)
    args = dict(zip(spec.args[::2], spec.args[1::2], strict=False))
    if runtime == "process":
        assert (args["--host"], args["--port"]) == ("127.0.0.1", "40099")
    else:  # inside its container it listens as before; docker publishes it on loopback
        assert (args["--host"], args["--port"]) == ("0.0.0.0", "40080")


def test_behind_the_gateway_the_preset_shortens_the_routers_stop_timeout(
        layout: Layout) -> None:
    behind = preset_of(build(layout, "llama-server", "process", gateway={"enabled": True}))
    alone = preset_of(build(layout, "llama-server", "process"))
    sections = behind.count("\n[")
    assert sections >= 1 and behind.count("stop-timeout = 2") == sections
    assert "stop-timeout" not in alone  # the router's own 10 s lets busy requests finish
