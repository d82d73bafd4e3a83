#!/usr/bin/env bash
# Set up kilo_web if needed, then start it in development mode with
# `reflex run`: the web app on http://127.0.0.1:3000 and its backend on
# http://127.0.0.1:8000. Extra arguments go to `reflex run`.
set -euo pipefail

"$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$KILO_PROJECT_DIR"
exec reflex run "$@"
