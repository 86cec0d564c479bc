#!/usr/bin/env bash
# The whole check: lint, format, types, then the test suite (golden checks on the full-size model included) and the
# browser client's tests. Run from an activated .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
if [ -f client_js/package.json ]; then
  (cd client_js && npm test --silent)
fi
