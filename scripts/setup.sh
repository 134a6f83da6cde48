# Sourced by scripts/demo and scripts/test: install what is missing, make .venv, build
# llama-server (cached by version under ~/.cache/localai-supervisor). Idempotent and quiet
# when everything is there already.
set -euo pipefail

setup_system_packages() {
    local need=()
    command -v cmake >/dev/null || need+=(cmake)
    command -v g++ >/dev/null || need+=(g++)
    command -v make >/dev/null || need+=(make)
    python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
    for pkg in "$@"; do
        case "$pkg" in
            docker.io) command -v dockerd >/dev/null || need+=(docker.io) ;;
            busybox-static) [ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q static \
                || dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static) ;;
            *) dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg") ;;
        esac
    done
    [ ${#need[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing: ${need[*]} — install them (sudo apt-get install -y ${need[*]}) and rerun" >&2
        exit 1
    fi
    echo "installing: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

setup_venv() {
    local extras="$1"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    local stamp=".venv/.installed-$extras"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        if ! .venv/bin/pip install -q --disable-pip-version-check -e ".$extras" \
                > .venv/pip-install.log 2>&1; then
            cat .venv/pip-install.log >&2
            echo "pip install failed (log above, also in .venv/pip-install.log)" >&2
            exit 1
        fi
        touch "$stamp"
    fi
}

setup_llama_server() {
    python3 scripts/build_llama_server.py
}
