"""`supervisorctl doctor` end to end: against the real llama-server bench (models whose load
fails, explained from the router's real log), and offline on the original setup's config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from original import write_original
from supervised import BIN, Supervised
from testbed import http_json

from supervisor.tinygguf import write_tiny_llama

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def broken_models(tmp_path: Path, tiny_models: Path) -> Path:
    """tiny-a, and two files whose header reads but whose load fails: an architecture
    llama.cpp does not know, and a tensor of the wrong shape (a damaged file)."""
    d = tmp_path / "broken-models"
    d.mkdir()
    shutil.copy(tiny_models / "tiny-a.gguf", d / "tiny-a.gguf")
    write_tiny_llama(d / "odd-arch.gguf", name="odd-arch", architecture="nosucharch")
    write_tiny_llama(d / "damaged.gguf", name="damaged", wrong_shape=True)
    past = time.time() - 60  # not "still being written"
    for f in d.iterdir():
        os.utime(f, (past, past))
    return d


def doctor(sup: Supervised, *args: str) -> tuple[int, dict[str, object]]:
    out = subprocess.run([str(BIN / "supervisorctl"), "-s", str(sup.socket), "-c",
                          str(sup.settings_file), "doctor", "--json", *args],
                         capture_output=True, text=True, timeout=120, check=False)
    return out.returncode, json.loads(out.stdout)


@pytest.mark.parametrize(("model", "code", "line"), [
    ("odd-arch", "load-unknown-architecture", "unknown model architecture: 'nosucharch'"),
    ("damaged", "load-bad-file", "has wrong shape")])
def test_a_model_whose_load_fails_is_explained_from_the_real_log(
        make_process_supervised, broken_models: Path, model: str, code: str, line: str) -> None:
    sup = make_process_supervised(
        {"tiny-a": "tiny-a.gguf", model: f"{model}.gguf"}, models_dir=broken_models,
        health={"model_probes": True, "model_interval": 1.0}).start()
    sup.wait_running()
    status, body = http_json("POST", sup.server_url + "/v1/chat/completions",
                             {"model": model, "max_tokens": 1,
                              "messages": [{"role": "user", "content": "hi"}]}, 30)
    assert status != 200, body
    sup.wait_for(lambda s: any(m["name"] == model and m["last_error"] for m in s["models"]),
                 60, f"{model} failing")
    rc, report = doctor(sup, model)
    assert rc == 1 and report["live"] is True, report
    found = [f for f in report["findings"] if f["code"] == code]  # type: ignore[union-attr]
    assert found, report
    assert found[0]["symptom"] == "could not load model" and found[0]["model"] == model
    assert any(line in e for e in found[0]["evidence"]), found[0]
    # /status counts it, and so does /metrics.
    st = sup.status()
    assert st["findings_by_symptom"].get("could not load model", 0) >= 1
    _, metrics = http_json("GET", f"http://127.0.0.1:{sup.status_port}/metrics", None, 5)
    assert 'localai_supervisor_findings{symptom="load_fails"}' in str(metrics)


def test_doctor_offline_on_the_original_config(tmp_path: Path) -> None:
    """No daemon: the config and the models dir (tiny GGUFs named like the original's)."""
    config, models = write_original(tmp_path)
    settings = tmp_path / "s.toml"
    settings.write_text(f'[supervisor]\nstate_dir = "{tmp_path / "state"}"\n'
                        f'control_socket = "{tmp_path / "none.sock"}"\n'
                        f'[server]\nmodel_config_file = "{config}"\nmodels_dir = "{models}"\n'
                        '[localai]\nversion = "v3.9.0"\n')
    out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(settings), "doctor"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1, out.stderr
    assert "checking offline" in out.stderr
    text = out.stdout
    assert text.startswith("localai v3.9.0, from setting; offline")
    assert "== answers cut off" in text and "about 511 tokens per request" in text
    assert "opens each user turn with '[INST]'" in text
    assert "ends each turn with '[/INST]'" not in text and "echo" not in text
    assert "this is a chat_message template" in text and "chat_message: |" in text
    assert "unknown key 'batch'" in text


def test_doctor_offline_names_the_llama_server_build(tmp_path: Path,
                                                    llama_server_dir: Path) -> None:
    """No daemon, llama-server engine, process runtime: the version is what the binary's
    --version prints."""
    config, models = write_original(tmp_path)
    settings = tmp_path / "s.toml"
    settings.write_text(f'[supervisor]\nstate_dir = "{tmp_path / "state"}"\n'
                        f'control_socket = "{tmp_path / "none.sock"}"\n'
                        f'[server]\nengine = "llama-server"\nruntime = "process"\n'
                        f'model_config_file = "{config}"\nmodels_dir = "{models}"\n'
                        f'[process]\nbinary = "{llama_server_dir / "llama-server"}"\n')
    out = subprocess.run([str(BIN / "supervisorctl"), "-c", str(settings), "doctor",
                          "--offline", "--json"], capture_output=True, text=True, timeout=60,
                         check=False)
    report = json.loads(out.stdout)
    said = subprocess.run([str(llama_server_dir / "llama-server"), "--version"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert report["engine"] == "llama-server" and report["version_source"] == "program"
    assert f"version: {report['engine_version']}" in said.stdout + said.stderr


def test_doctor_reports_a_live_answer_cut_at_the_slot_budget(make_process_supervised) -> None:
    """Real llama-server, context_size 512 over options parallel:2 (256 tokens a request, the
    preset carries parallel = 2; llama.cpp rounds a slot up to 256, so less would not be what
    runs), greedy decoding: the smoke check's prompt takes 94 tokens
    and its answer stops where the slot is full, well before smoke_max_tokens. llama-server
    says finish_reason "length" there; LocalAI says "stop", which is why the verdict reads
    the request budget, not finish_reason. doctor lists it live under answers cut off, with
    the smoke check's numbers as evidence, beside the config finding that predicted it."""
    sup = make_process_supervised({}, health={"smoke_interval": 0.5, "smoke_max_tokens": 200})
    sup.config_file.write_text(
        "- name: tiny-a\n  context_size: 512\n  options: ['parallel:2']\n"
        "  parameters:\n    model: tiny-a.gguf\n    temperature: 0\n    seed: 1\n")
    sup.start()
    sup.wait_running()
    status, body = http_json("POST", sup.server_url + "/v1/chat/completions",
                             {"model": "tiny-a", "max_tokens": 1,
                              "messages": [{"role": "user", "content": "hi"}]}, 30)
    assert status == 200, body  # loaded: the smoke check asks loaded models only
    st = sup.wait_for(lambda s: any(m["name"] == "tiny-a" and m["output_warning"]
                                    for m in s["models"]), 30, "a smoke verdict for tiny-a")
    warning = next(m["output_warning"] for m in st["models"] if m["name"] == "tiny-a")
    # 94 + 162 = 256: the slot is what the preset asked for (parallel = 2), not the 512 of
    # llama-server's automatic slots.
    assert "cut off after 162 tokens: prompt (94) + answer filled the 256 tokens a request " \
        "gets" in warning, warning
    rc, report = doctor(sup, "tiny-a")
    assert rc == 1 and report["live"] is True, report
    codes = {f["code"]: f for f in report["findings"]}  # type: ignore[union-attr]
    assert codes["smoke-cut-off"]["symptom"] == "answers cut off", codes
    assert codes["context-too-small"]["symptom"] == "answers cut off", codes
    assert "llama-server reports finish_reason \"length\"" in codes["context-too-small"]["message"]
