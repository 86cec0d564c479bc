#!/usr/bin/env bash
# Set up a virtual environment with everything the service needs.  --test also installs test tools and the
# browser (Debian's Chromium) used by the end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[[ "${1:-}" == "--test" ]] && WITH_TEST=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU build of torch from the local wheel cache first; anything else would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
# compat mode: a plain .pth puts the checkout on the path, so type checkers and editors resolve spann3r.* (through
# the links in spann3r/) exactly as the interpreter does
if [ "$WITH_TEST" = 1 ]; then
  python -m pip install -q -e ".[test]" --config-settings editable_mode=compat
else
  python -m pip install -q -e ".[server]" --config-settings editable_mode=compat
fi
if [ -f client_js/package.json ] && command -v npm >/dev/null; then
  (cd client_js && (npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error) && npm run build --silent)
fi
# Debian packages the tests start themselves: Chromium (browser tests), redis-server (the Redis session store)
apt_install() {
  local run=()
  [ "$(id -u)" = 0 ] || run=(sudo)
  "${run[@]}" apt-get update -qq && "${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ "$WITH_TEST" = 1 ]; then
  command -v chromium >/dev/null || apt_install chromium
  command -v redis-server >/dev/null || apt_install redis-server
fi
