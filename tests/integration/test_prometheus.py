"""The monitoring assets against a real Prometheus (Debian's prometheus package) scraping a
running supervisor: the target is up, every alert rule and every dashboard query evaluates
without error, the core series are there; promtool checks the rules, the config and the
/metrics output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from supervised import Supervised
from testbed import REPO, chat, free_port

pytestmark = pytest.mark.integration

RULES = REPO / "etc" / "prometheus" / "localai-supervisor-rules.yml"
SCRAPE = REPO / "etc" / "prometheus" / "localai-supervisor.yml"
DASHBOARD = REPO / "etc" / "grafana" / "localai-supervisor-dashboard.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: scripts/test installs Debian's prometheus package"
    return path


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def prometheus(make_process_supervised: Callable[..., Supervised], tmp_path: Path
               ) -> Iterator[tuple[str, Supervised]]:
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
                                  gateway={"enabled": True})
    sup.start()
    sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")
    config = yaml.safe_load(SCRAPE.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["scrape_configs"][0]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{sup.status_port}"]}]
    config["rule_files"] = [str(RULES)]
    conf = tmp_path / "prometheus.yml"
    conf.write_text(yaml.safe_dump(config))
    check = subprocess.run([tool("promtool"), "check", "config", str(conf)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    proc = subprocess.Popen(
        [tool("prometheus"), f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'db'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        yield f"http://127.0.0.1:{port}", sup
    finally:
        proc.terminate()
        proc.wait(10)


def query(base: str, expr: str) -> Any:
    return get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_a_real_prometheus_scrapes_the_supervisor_and_evaluates_rules_and_dashboard(
        prometheus: tuple[str, Supervised]) -> None:
    base, sup = prometheus
    assert chat(sup.gateway_url, "tiny-a")[0] == 200
    assert chat(sup.gateway_url, "tiny-b")[0] == 200
    deadline = time.monotonic() + 60
    while True:
        try:
            targets = get(f"{base}/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            targets = []
        if targets and targets[0]["health"] == "up" and query(
                base, "localai_supervisor_gateway_requests_total")["data"]["result"]:
            break
        assert time.monotonic() < deadline, f"target not up with gateway series: {targets}"
        time.sleep(0.5)
    # Every alert rule's expression and every dashboard query evaluates without error.
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    for expr in [r["expr"] for r in rules] + dashboard_queries():
        answer = query(base, expr)
        assert answer["status"] == "success", (expr, answer)
    # The core series have values.
    assert query(base, "localai_supervisor_server_up")["data"]["result"][0]["value"][1] == "1"
    for series in ("localai_supervisor_server_state", "localai_supervisor_model_health",
                   "localai_supervisor_server_restarts_total",
                   "localai_supervisor_gateway_time_to_first_byte_seconds_bucket",
                   "localai_supervisor_config_info", "process_resident_memory_bytes"):
        assert query(base, series)["data"]["result"], series
    # The rules are loaded and none fires on a healthy supervisor.
    groups = get(f"{base}/api/v1/rules")["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(rules) and all(r["health"] == "ok" for r in loaded), loaded
    assert not [r["name"] for r in loaded if r["state"] == "firing"]


def test_promtool_accepts_the_rules_and_the_metrics_output(
        make_process_supervised: Callable[..., Supervised]) -> None:
    rules = subprocess.run([tool("promtool"), "check", "rules", str(RULES)],
                           capture_output=True, text=True, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    sup = make_process_supervised({"tiny-a": "tiny-a.gguf", "tiny-b": "tiny-b.gguf"},
                                  gateway={"enabled": True})
    sup.start()
    sup.wait_for(lambda s: s["state"] == "RUNNING", 60, "RUNNING")
    for model in ("tiny-a", "tiny-b"):  # a swap: its series exist from then on
        assert chat(sup.gateway_url, model)[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{sup.status_port}/metrics") as resp:
        text = resp.read()
    lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text,
                          capture_output=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # Every series the rules and the dashboard name exists (an empty answer to a misspelt
    # name would still "evaluate without error"). GPU series need NVML: a fake reading here.
    from supervisor.gpumem import GpuReading
    from supervisor.gpumetrics import gpu_exposition

    text += gpu_exposition([GpuReading(0, "gpu", "GPU-0", 1, 2, 3.0, 4.0, 5.0)])
    exported = set(re.findall(rb"^([a-z_:]+)[{ ]", text, flags=re.M))
    named = set(re.findall(r"\b(localai_supervisor_[a-z_]+|process_[a-z_]+)",
                           RULES.read_text() + " ".join(dashboard_queries())))
    assert {n for n in named if n.encode() not in exported} == set()
