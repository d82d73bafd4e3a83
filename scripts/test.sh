#!/usr/bin/env bash
# Set up kilo_web if needed, then run the whole test suite with pytest.
# Extra arguments go to pytest, e.g. `./scripts/test.sh tests/chat -x`.
set -euo pipefail

"$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$KILO_PROJECT_DIR"
exec python -m pytest "$@"
