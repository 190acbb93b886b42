#!/usr/bin/env bash
# The main job: set up if needed, then run `implicit-snn` (by default the solver demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
if [ "$#" -eq 0 ]; then set -- demo; fi
exec "$root/.venv/bin/implicit-snn" "$@"
