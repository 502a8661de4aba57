#!/usr/bin/env bash
# The whole test suite: lint, types, tests. Fails if anything fails or if no test was collected.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
status=0
echo "== ruff" && ruff check gbcs gateway tests tools bench || status=1
echo "== mypy --strict (gbcs, gateway)" && mypy || status=1
echo "== pytest"
# in two worker processes (pytest-xdist; a module's tests stay together: --dist loadfile), ~8 minutes here
# against ~14 serially; DUISGW_TEST_WORKERS=0 runs them in this process
pytest -q -p no:cacheprovider -n "${DUISGW_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no test: failing" >&2
  rc=1
fi
[ $rc -ne 0 ] && status=$rc
exit $status
