#!/usr/bin/env bash
# Set up (virtual environment, browser client build) and start the service.
#   scripts/run.sh                                     # synthetic (untrained) weights, CPU, http://127.0.0.1:8000
#   scripts/run.sh --weights checkpoints/spann3r.pth --device cuda --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
if ! printf '%s\n' "${args[@]:-}" | grep -q -- '--weights' && [ -z "${SPANN3R_WEIGHTS:-}" ] && [ ! -f checkpoints/spann3r.pth ]; then
  echo "No checkpoints/spann3r.pth: starting with --weights synthetic (untrained demo). Pass --weights PATH for real results." >&2
  args+=(--weights synthetic)
fi
exec .venv/bin/spann3r serve "${args[@]}"
