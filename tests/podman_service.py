"""A private ``podman system service`` exposing the Docker-compatible API on a unix socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import log_tail

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


@dataclass
class PodmanService:
    base: Path
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"unix://{self.base}/podman.sock"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}

    def podman(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot",
                str(self.base / "run"), "--storage-driver", "vfs", *args]

    @classmethod
    def start(cls, timeout: float = 60) -> PodmanService:
        base = Path(tempfile.mkdtemp(prefix="lsp-", dir="/tmp"))
        (base / "containers.conf").write_text(CONTAINERS_CONF)
        svc = cls(base, None)  # type: ignore[arg-type]
        with (base / "service.log").open("wb") as log:
            svc.proc = subprocess.Popen(
                svc.podman("system", "service", "--time=0", svc.host),
                stdout=log, stderr=subprocess.STDOUT, env=svc.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"podman service exited:\n{log_tail(base / 'service.log')}")
            if (base / "podman.sock").exists():
                ok = subprocess.run(["docker", "-H", svc.host, "version"], capture_output=True,
                                    check=False, timeout=10)
                if ok.returncode == 0:
                    return svc
            time.sleep(0.2)
        svc.stop()
        raise TimeoutError(f"podman service not answering:\n{log_tail(base / 'service.log')}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(self.podman("rm", "--all", "--force", "--time", "1"),
                           env=self.env, capture_output=True, timeout=60, check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mnt in sorted((m for m in mounts if m.startswith(f"{self.base}/")), reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
