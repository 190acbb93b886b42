#!/usr/bin/env bash
# The main job: set up if needed, then run `implicit-snn`. Without arguments: a short training run
# of the default model (F400 on Fashion-MNIST, the paper's settings, 5 epochs) that prints the
# test accuracy; with arguments: `implicit-snn ARGS`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
if [ "$#" -eq 0 ]; then set -- train --epochs 5 --out "$root/runs/quickstart" --overwrite; fi
exec "$root/.venv/bin/implicit-snn" "$@"
