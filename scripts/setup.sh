#!/usr/bin/env bash
# Prepare kilo_web to run: Python packages, the bun JavaScript runtime,
# database migrations and demo data. Safe to run again; steps that are
# already done are skipped.
#
# Needs: Python 3.11 with the venv module (Debian: python3-venv) and npm.
# Set PYTHON to choose the interpreter (default: python3.11, else python3).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$KILO_PROJECT_DIR"

BUN_VERSION=1.4.4

log() {
    echo "setup: $*" >&2
}

fail() {
    echo "setup: error: $*" >&2
    exit 1
}

choose_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    else
        echo python3
    fi
}

setup_virtualenv() {
    if [[ ! -x .venv/bin/python ]]; then
        local python
        python="$(choose_python)"
        command -v "$python" >/dev/null 2>&1 || fail "$python not found; install Python 3.11 or set PYTHON"
        "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
            || fail "$python is not Python 3.11; the pinned packages were checked on 3.11 only"
        log "creating .venv with $python"
        "$python" -m venv .venv || fail "could not create .venv; on Debian install python3-venv"
    fi

    # pip is skipped when the requirement files are unchanged since the last
    # successful install, which keeps a re-run fast and offline.
    local stamp=.venv/.kilo-requirements.sha256
    local digest
    digest="$(cat requirements.txt constraints.txt | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
        return
    fi
    log "installing Python packages from requirements.txt"
    .venv/bin/python -m pip install --disable-pip-version-check --quiet -r requirements.txt
    echo "$digest" >"$stamp"
}

bun_works() {
    [[ -x "$1" ]] && [[ "$("$1" --version 2>/dev/null)" == "$BUN_VERSION" ]]
}

# Print the path of a bun binary of BUN_VERSION inside .tools, if there is one.
find_working_bun() {
    local candidate
    for candidate in .tools/node_modules/bun/bin/bun.exe .tools/node_modules/@oven/bun-*/bin/bun; do
        if bun_works "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

setup_bun() {
    if bun_works .tools/bin/bun; then
        return
    fi
    command -v npm >/dev/null 2>&1 || fail "npm not found; install Node.js and npm (Debian: apt-get install nodejs npm)"

    local bun_path
    if ! bun_path="$(find_working_bun)"; then
        log "installing bun $BUN_VERSION into .tools with npm"
        mkdir -p .tools
        npm install --prefix .tools --no-audit --no-fund --save-exact "bun@$BUN_VERSION" >&2
        if ! bun_path="$(find_working_bun)"; then
            # npm can be configured to skip install scripts, and the bun
            # package's postinstall is what puts the real binary in place.
            log "bun's install script did not run; running it now"
            (cd .tools/node_modules/bun && node install.js) >&2 || true
            bun_path="$(find_working_bun)" || fail "no working bun $BUN_VERSION in .tools/node_modules after npm install"
        fi
    fi
    mkdir -p .tools/bin
    ln -sfn "$KILO_PROJECT_DIR/$bun_path" .tools/bin/bun
    bun_works .tools/bin/bun || fail ".tools/bin/bun does not run"
    log "using bun $BUN_VERSION from $bun_path"
}

migrate_database() {
    log "applying database migrations"
    .venv/bin/python -m alembic -c alembic.ini upgrade head
}

create_vapid_key() {
    # The Web Push key pair; kept across runs, since every browser
    # subscription is bound to its public key.
    .venv/bin/python -m kilo_web.notifications.vapid
}

seed_database() {
    .venv/bin/python -m kilo_web.seed
}

setup_virtualenv
setup_bun
migrate_database
create_vapid_key
seed_database
log "done"
