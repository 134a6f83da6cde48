"""Validate before apply, settle before restart, and a watcher that copes with odd file systems.

Against the real engine: the docker tests use the private dockerd + llama-server image, the
watcher tests the process runtime (the same daemon code, faster to start).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from supervised import BIN, Supervised, wait_chat

from supervisor.tinygguf import write_tiny_llama

pytestmark = pytest.mark.integration


def slow_copy(src: Path, dst: Path, chunks: int = 8, pause: float = 0.5) -> None:
    """Copy like a slow network copy would: the file grows in chunks over several seconds."""
    data = src.read_bytes()
    step = len(data) // chunks + 1
    with dst.open("wb") as out:
        for i in range(0, len(data), step):
            out.write(data[i:i + step])
            out.flush()
            time.sleep(pause)


def test_slow_copy_restarts_exactly_once_after_complete(make_supervised, tmp_path: Path,
                                                        tiny_models: Path) -> None:
    sup = make_supervised()
    src = tmp_path / "tiny-c.gguf"
    write_tiny_llama(src, seed=3, name="tiny-c")
    target = tiny_models / "tiny-c.gguf"
    target.unlink(missing_ok=True)
    try:
        sup.start()
        cid = sup.wait_running()["instance"]["id"]
        # The config names the model before its file is there: rejected, server untouched.
        sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-c": "tiny-c.gguf"})
        st = sup.wait_for(lambda s: s["config"]["rejected"] is not None, what="rejection")
        assert "does not exist" in st["config"]["rejected"]["errors"][0]
        # Now the file arrives slowly; meanwhile it is incomplete or still changing.
        t0 = time.monotonic()
        pendings = 0
        from threading import Thread
        copier = Thread(target=slow_copy, args=(src, target))
        copier.start()
        while copier.is_alive():
            st = sup.status()
            assert st["restarts"] == 0 and st["instance"]["id"] == cid, st
            pendings += bool(st["config"]["pending"])
            time.sleep(0.2)
        copier.join()
        st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING",
                          what="one restart after the copy")
        print(f"copy finished after {time.monotonic() - t0:.2f}s; pending seen {pendings}x")
        wait_chat(sup.server_url, "tiny-c")
        assert pendings > 0
        # Checked again now, the files are settled and applied: nothing more to do.
        reloaded = sup.ctl("reload")
        assert reloaded.returncode == 0 and "unchanged" in reloaded.stdout, reloaded
        st = sup.status()
        assert st["restarts"] == 1, st["recent_events"]
        assert st["config"]["pending"] == [] and st["config"]["rejected"] is None
    finally:
        target.unlink(missing_ok=True)


def test_lint_warnings_are_applied_and_shown(make_supervised) -> None:
    sup = make_supervised()
    sup.config_file.write_text(
        "- name: tiny-a\n  context_size: 9000\n  gpu_layers: 7\n  parameters:\n"
        "    model: tiny-a.gguf\n    templature: 0.2\n    max_tokens: 16\n")
    sup.start()
    st = sup.wait_running()
    codes = {w["code"] for w in st["config"]["warnings"]}
    assert {"context-exceeds-training", "gpu-layers-exceed", "unknown-key"} <= codes, codes
    typo = next(w for w in st["config"]["warnings"] if w["code"] == "unknown-key")
    assert typo["line"] == 6 and "parameters.temperature" in typo["hint"]
    # llama-server cannot use the misspelt key either, and says so.
    dropped = [json.loads(line) for line in sup.logs(200).splitlines()
               if '"engine.fields_dropped"' in line]
    assert dropped and dropped[0]["fields"] == ["parameters.templature"], dropped


@pytest.fixture
def proc_sup(make_process_supervised, tiny_models: Path, tmp_path: Path) -> Supervised:
    models = tmp_path / "store" / "models"
    shutil.copytree(tiny_models, models)
    return make_process_supervised({"tiny-a": "tiny-a.gguf"}, models_dir=models)


def test_models_dir_deleted_and_recreated(proc_sup: Supervised) -> None:
    sup = proc_sup.start()
    rev = sup.wait_running()["config"]["revision"]
    shutil.rmtree(proc_sup.models_dir)
    st = sup.wait_for(lambda s: s["config"]["rejected"] is not None, what="rejection")
    assert st["state"] == "RUNNING"  # the loaded model keeps serving
    proc_sup.models_dir.mkdir()
    staged = proc_sup.models_dir.with_name("staged.gguf")
    write_tiny_llama(staged, seed=9, name="tiny-a")  # another model under the same name
    os.utime(staged, (time.time() - 60, time.time() - 60))
    staged.rename(proc_sup.models_dir / "tiny-a.gguf")
    st = sup.wait_for(lambda s: s["config"]["rejected"] is None and s["restarts"] == 1
                      and s["state"] == "RUNNING", timeout=30, what="re-created dir applied")
    assert st["config"]["revision"] != rev
    wait_chat(sup.server_url, "tiny-a")


def test_models_dir_replaced_by_symlink_is_followed(proc_sup: Supervised,
                                                    tmp_path: Path) -> None:
    sup = proc_sup.start()
    sup.wait_running()
    other = tmp_path / "elsewhere"
    shutil.copytree(proc_sup.models_dir, other)
    shutil.rmtree(proc_sup.models_dir)
    proc_sup.models_dir.symlink_to(other)
    st = sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING", timeout=30,
                      what="restart onto the symlinked dir")
    # Changes under the new target are seen: a new model file + config entry.
    write_tiny_llama(other / "tiny-d.gguf", seed=4, name="tiny-d")
    os.utime(other / "tiny-d.gguf", (time.time() - 60, time.time() - 60))
    sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-d": "tiny-d.gguf"})
    sup.wait_for(lambda s: s["restarts"] == 2 and s["state"] == "RUNNING", timeout=30,
                 what="restart for the new model")
    wait_chat(sup.server_url, "tiny-d")
    assert st["config"]["rejected"] is None


def test_symlink_loop_in_models_dir_is_harmless(proc_sup: Supervised) -> None:
    (proc_sup.models_dir / "loop").symlink_to(".")
    (proc_sup.models_dir / "sub").mkdir()
    (proc_sup.models_dir / "sub" / "back").symlink_to("..")
    sup = proc_sup.start()
    sup.wait_running()
    sup.write_config({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"})
    sup.wait_for(lambda s: s["restarts"] == 1 and s["state"] == "RUNNING", timeout=30,
                 what="config applied")
    wait_chat(sup.server_url, "tiny-b")


def test_supervisorctl_check_without_daemon(tiny_models: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("- name: tiny-a\n  context_size: 2048\n  stopwords: ['</s>']\n"
                   "  parameters:\n    model: tiny-a.gguf\n    max_tokens: 64\n")
    # One slot (LLAMACPP_PARALLEL=1: an options parallel:1 would not override the default 8).
    settings = tmp_path / "supervisor.toml"
    settings.write_text("[server]\nparallel = 1\n")
    ctl = [str(BIN / "supervisorctl"), "-c", str(settings), "check", str(cfg),
           "--models-dir", str(tiny_models)]
    ok = subprocess.run(ctl, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    cfg.write_text(cfg.read_text() + "  mlock: true\n")
    warn = subprocess.run([*ctl, "--strict", "--json"], capture_output=True, text=True,
                          check=False)
    assert warn.returncode == 1, warn.stdout
    body = json.loads(warn.stdout)
    assert body["warnings"][0]["code"] == "unknown-key"
    assert "mmlock" in body["warnings"][0]["hint"]
    cfg.write_text("- name: tiny-a\n  parameters: {model: nope.gguf}\n- name: tiny-a\n")
    bad = subprocess.run(ctl, capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "does not exist" in bad.stdout and "duplicate model name" in bad.stdout
