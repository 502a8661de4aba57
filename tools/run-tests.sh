#!/usr/bin/env bash
# The whole test suite: lint, types, tests. Fails if anything fails or if no test was collected.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$(pwd)/.venv/bin:$PATH"
status=0
echo "== ruff" && ruff check gbcs gateway tests tools bench || status=1
echo "== mypy --strict (gbcs, gateway)" && mypy || status=1
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no test: failing" >&2
  rc=1
fi
[ $rc -ne 0 ] && status=$rc
exit $status
