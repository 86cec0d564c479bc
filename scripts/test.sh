#!/usr/bin/env bash
# The whole test suite (golden checks on the full-size model included). Run from an activated .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -p no:cacheprovider "$@"
if [ -f client_js/package.json ]; then
  (cd client_js && npm test --silent)
fi
