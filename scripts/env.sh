# Environment shared by the kilo_web scripts; source it, do not run it.
#
# Puts the project's virtualenv and its bun (installed by setup.sh into
# .tools) first on PATH. Reflex 0.10.1 would otherwise use npm, which needs
# Node.js 22.22 or newer; REFLEX_USE_SYSTEM_BUN=1 makes it use the bun on PATH.

KILO_PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KILO_PROJECT_DIR
export PATH="$KILO_PROJECT_DIR/.venv/bin:$KILO_PROJECT_DIR/.tools/bin:$PATH"
export REFLEX_USE_SYSTEM_BUN=1
