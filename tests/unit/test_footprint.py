"""What the daemon keeps out of its memory: modules it never needs (idle RSS; the numbers are
in bench/recovery.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import supervisor.cli, supervisor.daemon
from supervisor.runtime import make_runtime
from supervisor.settings import Settings
make_runtime(Settings.model_validate({"server": {"runtime": "docker"}}))
import requests
answer = requests.models.Response()
answer._content = '{"Status": "héllo"}'.encode()
print(json.dumps({"loaded": sorted(m for m in ("numpy", "charset_normalizer", "chardet")
                                   if sys.modules.get(m) is not None),
                  "encoding": answer.apparent_encoding, "json": answer.json(),
                  "text": answer.text}))
"""


def test_the_docker_daemon_loads_no_numpy_and_no_charset_detector() -> None:
    out = subprocess.run([sys.executable, "-W", "error::Warning", "-c", PROBE], check=True,
                         capture_output=True, text=True, timeout=60)
    seen = json.loads(out.stdout)
    assert seen["loaded"] == []
    # What requests assumes without a detector is what the Docker API sends: UTF-8 JSON.
    assert seen["encoding"] == "utf-8"
    assert seen["json"] == {"Status": "héllo"} and seen["text"] == '{"Status": "héllo"}'


def test_a_detector_blocked_for_requests_stays_importable_for_others() -> None:
    probe = ("from supervisor.runtime import _import_requests_without_charset_detection as f\n"
             "f()\nimport charset_normalizer, requests\n"
             "assert requests.compat.chardet is None\n")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
