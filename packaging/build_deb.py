#!/usr/bin/env python3
"""Build the Debian package: dist/localai-supervisor_<version>-1_<arch>.deb (plus the wheel and
sdist it is made from, via `python -m build`).

The application and its dependencies go into their own virtual environment under
/opt/localai-supervisor, made here on Debian's python3.11 (which the package depends on) from
the wheel. Network is needed here only (PyPI, for the dependencies): installing the package
needs none. Run from the repository with its .venv (scripts/test makes it):

    .venv/bin/python packaging/build_deb.py [--out DIR]

tests/integration/test_systemd_unit.py runs lintian on the result and installs it under a
real systemd.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "packaging"
NAME = "localai-supervisor"
PREFIX = Path("/opt") / NAME
# The interpreter the venv runs on; the package depends on its Debian package.
PYTHON = Path("/usr/bin/python3.11")
DEBIAN_REVISION = "1"
MAINTAINER = "localai-supervisor developers <localai-supervisor@lists.invalid>"
DESCRIPTION = """\
keeps a local LLM server (LocalAI or llama-server) alive and correct
 localai-supervisor runs LocalAI or llama.cpp's llama-server in a Docker
 container (or as a child process) on GGUF models: it validates config.yaml
 and model files before any restart, health-checks the server and each model
 and heals what fails, fronts the server with a swap-aware gateway (requests
 for a second model queue instead of failing), and offers supervisorctl, an
 HTTP status API with Prometheus metrics, and systemd integration (Type=notify,
 watchdog, reload, socket activation)."""
# The venv's programs that the package offers; the dependencies' own are left out.
PROGRAMS = ("localai-supervisor", "localai-supervisorctl")


def run(*argv: str | Path) -> None:
    """Run quietly; on failure show what it said."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, argv))}")


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def build_dists(out: Path) -> Path:
    """Wheel and sdist with `python -m build`; returns the wheel."""
    run(sys.executable, "-m", "build", "--outdir", out, REPO)
    wheels = sorted(out.glob(f"{NAME.replace('-', '_')}-{version()}-*.whl"))
    if not wheels:
        raise SystemExit(f"no wheel for {version()} in {out}")
    return wheels[-1]


def make_venv(root: Path, wheel: Path) -> None:
    """The venv at root/PREFIX, made to run from PREFIX once installed."""
    venv = root / PREFIX.relative_to("/")
    run(PYTHON, "-m", "venv", "--without-pip", venv)
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python3", "install",
        "--quiet", "--disable-pip-version-check", "--no-compile", wheel)
    staged = str(venv).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if staged in data:
            path.write_bytes(data.replace(staged, str(PREFIX).encode()))
    for link in ("python", "python3", "python3.11"):
        target = venv / "bin" / link
        target.unlink(missing_ok=True)
        target.symlink_to(PYTHON)
    for path in (venv / "bin").iterdir():
        if not path.name.startswith("python") and path.name not in PROGRAMS:
            path.unlink()
    for lib in venv.rglob("*.so*"):
        if lib.is_file() and not lib.is_symlink():
            lib.chmod(0o644)  # loaded, never run
            run("strip", "--strip-unneeded", lib)
    for cache in list(venv.rglob("__pycache__")):
        shutil.rmtree(cache)
    # Compiled now, with the installed paths in tracebacks: the service cannot write /opt.
    run(PYTHON, "-m", "compileall", "-q", "-j", "0", "-s", root, "-p", "/",
        venv / "lib")


def man_page(prog: str, argv: list[str], section: str = "8") -> bytes:
    """A small man page from the program's own --help, so `man` and --help agree."""
    text = subprocess.run([*argv, "--help"], check=True, capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}).stdout
    body = text.replace("\\", "\\e").replace("\n.", "\n\\&.").replace("\n'", "\n\\&'")
    page = (f'.TH {prog.upper()} {section} "" "{NAME} {version()}" "System Administration"\n'
            f".SH NAME\n{prog} \\- {DESCRIPTION.splitlines()[0]}\n"
            f".SH DESCRIPTION\n.nf\n{body}.fi\n"
            ".SH SEE ALSO\n/usr/share/doc/localai-supervisor/README.md\n")
    return gzip.compress(page.encode(), mtime=0)


def build_date() -> str:
    """RFC 2822, from SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    stamp = time.gmtime(float(os.environ.get("SOURCE_DATE_EPOCH", time.time())))
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", stamp)


def install(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def stage_files(root: Path) -> None:
    venv_bin = root / PREFIX.relative_to("/") / "bin"
    usr = root / "usr"
    (usr / "bin").mkdir(parents=True)
    for prog in PROGRAMS:
        (usr / "bin" / prog).symlink_to(PREFIX / "bin" / prog)
        man = usr / "share" / "man" / "man8" / f"{prog}.8.gz"
        man.parent.mkdir(parents=True, exist_ok=True)
        man.write_bytes(man_page(prog, [str(venv_bin / "python3"), str(venv_bin / prog)]))
    install(REPO / "systemd" / f"{NAME}.service", root / "lib/systemd/system" / f"{NAME}.service")
    install(REPO / "systemd" / f"{NAME}.socket", root / "lib/systemd/system" / f"{NAME}.socket")
    install(HERE / "sysusers.conf", usr / "lib/sysusers.d" / f"{NAME}.conf")
    install(HERE / "tmpfiles.conf", usr / "lib/tmpfiles.d" / f"{NAME}.conf")
    install(REPO / "etc" / NAME / "supervisor.toml", root / "etc" / NAME / "supervisor.toml")
    doc = usr / "share/doc" / NAME
    install(REPO / "README.md", doc / "README.md")
    install(HERE / "debian" / "copyright", doc / "copyright")
    install(REPO / "etc/localai/config.yaml", doc / "examples" / "config.yaml")
    for sub in ("prometheus", "grafana"):
        for f in sorted((REPO / "etc" / sub).iterdir()):
            install(f, doc / "examples" / sub / f.name)
    changelog = (f"{NAME} ({version()}-{DEBIAN_REVISION}) unstable; urgency=medium\n\n"
                 f"  * Built from the {NAME} repository.\n\n"
                 f" -- {MAINTAINER}  {build_date()}\n")
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(changelog.encode(), mtime=0))
    install(HERE / "debian" / "lintian-overrides", usr / "share/lintian/overrides" / NAME)


def control(root: Path, arch: str) -> None:
    deb = root / "DEBIAN"
    deb.mkdir()
    size_kb = sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir()) // 1024
    (deb / "control").write_text(
        f"Package: {NAME}\nVersion: {version()}-{DEBIAN_REVISION}\nArchitecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\nInstalled-Size: {size_kb}\n"
        "Depends: python3 (>= 3.11~), python3.11, libpython3.11-stdlib, systemd (>= 252)\n"
        "Recommends: docker.io | podman-docker\nSection: admin\nPriority: optional\n"
        f"Description: {DESCRIPTION}\n")
    (deb / "conffiles").write_text(f"/etc/{NAME}/supervisor.toml\n")
    for script in ("postinst", "prerm", "postrm"):
        install(HERE / "debian" / script, deb / script, 0o755)
    sums = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root)
        if rel.parts[0] not in ("DEBIAN", "etc"):
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}\n")
    (deb / "md5sums").write_text("".join(sums))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="where the .deb, wheel and sdist go (default: dist/)")
    args = parser.parse_args()
    if not PYTHON.exists():
        raise SystemExit(f"{PYTHON} missing: the package is built for Debian 12's python3.11")
    args.out.mkdir(parents=True, exist_ok=True)
    wheel = build_dists(args.out)
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        os.umask(0o022)
        make_venv(root, wheel)
        stage_files(root)
        control(root, arch)
        deb = args.out / f"{NAME}_{version()}-{DEBIAN_REVISION}_{arch}.deb"
        run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb)
    print(deb)


if __name__ == "__main__":
    main()
