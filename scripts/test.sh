#!/usr/bin/env bash
# Set up kilo_web if needed, then run the whole test suite with pytest, once
# per database in KILO_TEST_DATABASES (default "sqlite postgresql"). The
# PostgreSQL pass skips tests/browser, whose apps keep their own SQLite file
# or make their own PostgreSQL database. Extra arguments go to pytest, e.g.
# `KILO_TEST_DATABASES=sqlite ./scripts/test.sh tests/chat -x`.
set -euo pipefail

"$(dirname "${BASH_SOURCE[0]}")/setup.sh"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$KILO_PROJECT_DIR"

status=0
for database in ${KILO_TEST_DATABASES:-sqlite postgresql}; do
    echo "== tests on $database"
    extra=()
    if [[ "$database" != "sqlite" ]]; then
        extra=(--ignore=tests/browser)
    fi
    pass=0
    KILO_TEST_DATABASE="$database" python -m pytest "${extra[@]}" "$@" || pass=$?
    # Exit status 5 means "no tests collected": fine for the second pass of a
    # run that names only browser tests, an error otherwise.
    if [[ "$pass" -ne 0 && ! ( "$pass" -eq 5 && "$database" != "sqlite" ) ]]; then
        status=$pass
    fi
done
exit "$status"
