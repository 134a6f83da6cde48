#!/usr/bin/env python3
"""Build a minimal llama-server Docker image (about 30 MB) with ``docker import``.

No base image and no registry: the root filesystem is assembled here from the cached
llama-server build (scripts/build_llama_server.py), the host libraries ``ldd`` names for it
(including the dynamic loader, at the same absolute paths) and a static busybox providing
``sh`` and ``wget`` for HEALTHCHECKs. The tarball is deterministic (fixed owners and
mtimes), so its sha256 identifies the image: a re-run finds an image with that tag and
label and does nothing.

Usage: build_image.py [--llama-dir DIR] [--tag TAG] [--docker-host HOST]   (prints the tag)
Standard library only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

IMAGE_REPO = "localai-supervisor/llama-server"
LLAMA_PREFIX = "/opt/llama"
HASH_LABEL = "org.localai-supervisor.content-hash"
BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ("sh", "wget")
CHANGES = [
    f'ENTRYPOINT ["{LLAMA_PREFIX}/llama-server"]',
    f"ENV LD_LIBRARY_PATH={LLAMA_PREFIX}",
    # The router scans LLAMA_CACHE (else $HOME/.cache) for models: keep it inside /tmp.
    "ENV LLAMA_CACHE=/tmp/llama-cache",
    "EXPOSE 8080/tcp",
]
SCRIPTS = Path(__file__).resolve().parent

# "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(\S+)(?:\s+\(0x[0-9a-f]+\))?\s*$")


def log(msg: str) -> None:
    print(f"[build-image] {msg}", file=sys.stderr, flush=True)


def llama_dir_from_build_script() -> Path:
    """The cached llama-server build; the build script returns at once when it is cached."""
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "build_llama_server.py")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def shared_deps(files: list[Path]) -> list[Path]:
    """Host libraries (and the loader) that ``ldd`` resolves for ``files``, sorted."""
    deps: set[Path] = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], check=True, stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            if "not found" in line:
                raise SystemExit(f"ldd {f}: unresolved library: {line.strip()}")
            m = LDD_LINE.match(line)
            if not m or not m.group(2).startswith("/"):
                continue  # linux-vdso.so.1 and friends live in the kernel, not on disk
            deps.add(Path(m.group(2)))
    return sorted(deps)


class RootFS:
    """A tarball whose bytes depend only on its contents (root owner, zero mtimes)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime = kind, mode, 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        parent = os.path.dirname(path)
        if parent not in ("/", ""):
            self.mkdir(parent)
        if path not in self.dirs:
            self.dirs.add(path)
            self.tar.addfile(self._info(path, tarfile.DIRTYPE, mode))

    def file(self, path: str, source: Path) -> None:
        """Add ``source``'s bytes (symlinks followed) at ``path``."""
        self.mkdir(os.path.dirname(path))
        data = source.read_bytes()
        info = self._info(path, tarfile.REGTYPE, source.stat().st_mode & 0o777)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        self.mkdir(os.path.dirname(path))
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)


def assemble(llama_dir: Path, out: Path) -> None:
    """Write the image's root filesystem tarball to ``out``."""
    entries = sorted(
        p
        for p in llama_dir.iterdir()
        if p.name in ("llama-server", "build-info.json") or ".so" in p.name
    )
    elf = [p for p in entries if p.name != "build-info.json" and not p.is_symlink()]
    with tarfile.open(out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        fs = RootFS(tar)
        fs.mkdir("/tmp", 0o1777)
        for p in entries:
            dest = f"{LLAMA_PREFIX}/{p.name}"
            if p.is_symlink():  # soname links stay links, relative to /opt/llama
                fs.symlink(dest, os.readlink(p))
            else:
                fs.file(dest, p)
        for dep in shared_deps(elf):
            if dep.resolve().parent != llama_dir.resolve():
                fs.file(str(dep), dep)
        fs.file(BUSYBOX, Path(BUSYBOX))
        for applet in BUSYBOX_APPLETS:
            fs.symlink(f"/bin/{applet}", "busybox")


def docker(host: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["docker", *(["-H", host] if host else []), *args]
    return subprocess.run(cmd, check=False, text=True, capture_output=True)


def existing_hash(host: str | None, tag: str) -> str | None:
    fmt = '{{ index .Config.Labels "' + HASH_LABEL + '" }}'
    res = docker(host, "image", "inspect", "--format", fmt, tag)
    return res.stdout.strip() if res.returncode == 0 else None


def build(llama_dir: Path, tag: str | None, host: str | None) -> str:
    info = json.loads((llama_dir / "build-info.json").read_text())
    tag = tag or f"{IMAGE_REPO}:{info['version']}"
    with tempfile.TemporaryDirectory(prefix="llama-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        assemble(llama_dir, rootfs)
        digest = hashlib.sha256()
        with rootfs.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        digest.update(json.dumps(CHANGES).encode())
        content_hash = digest.hexdigest()
        if existing_hash(host, tag) == content_hash:
            log(f"{tag} is up to date ({content_hash[:12]})")
            return tag
        size = rootfs.stat().st_size
        log(f"importing {tag} ({size / 1e6:.1f} MB rootfs, {content_hash[:12]})")
        changes = [*CHANGES, f"LABEL {HASH_LABEL}={content_hash}"]
        change_args = [arg for c in changes for arg in ("--change", c)]
        res = docker(host, "import", *change_args, str(rootfs), tag)
        if res.returncode != 0:
            raise SystemExit(f"docker import failed: {res.stderr.strip()}")
    return tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llama-dir",
        type=Path,
        help="llama-server build directory (default: run build_llama_server.py)",
    )
    parser.add_argument("--tag", help=f"image tag (default: {IMAGE_REPO}:<llama version>)")
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST"),
        help="daemon socket, passed as docker -H (default: $DOCKER_HOST)",
    )
    args = parser.parse_args()
    llama_dir = args.llama_dir or llama_dir_from_build_script()
    print(build(llama_dir, args.tag, args.docker_host))


if __name__ == "__main__":
    main()
