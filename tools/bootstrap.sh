#!/usr/bin/env bash
# One entry point for a fresh machine (see README):
#   bash tools/bootstrap.sh run    install everything, then run the main job on its embedded default
#   bash tools/bootstrap.sh test   install everything (pip and Debian packages), then run the whole test suite
# Installs Debian packages with apt-get when missing (root, or sudo), creates .venv and installs the
# project with its dev extras. Idempotent: a second call only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEB_PACKAGES=(xmlsec1 mosquitto redis-server tshark chromium)

need_debs=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need_debs+=("$p")
done
if [ ${#need_debs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "bootstrap: installing Debian packages: ${need_debs[*]}" >&2
  $SUDO apt-get update -qq
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.duisgw-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[dev]" >&2
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

case "${1:-}" in
  run)
    shift
    exec duisgw demo "$@"
    ;;
  test)
    shift
    exec bash tools/run-tests.sh "$@"
    ;;
  *)
    echo "usage: bash tools/bootstrap.sh run|test" >&2
    exit 2
    ;;
esac
