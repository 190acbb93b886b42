#!/usr/bin/env bash
# Re-creates what docs/analysis.md shows: the F400 analysis and T sweeps (from the F400 runs that
# scripts/reproduce_results.sh makes), the short-trained two-layer conv model and its analysis,
# and every figure under docs/figures/. One thread each; a finished conv run is not trained again.
#   bash scripts/reproduce_analysis.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/.venv/bin/implicit-snn"
runs="$root/docs/runs"
figures="$root/docs/figures"
cd "$root"
mkdir -p "$figures"

# F400: LIF and IF on the same weights; the IF T sweep beside the LIF one that results.md made.
f400="$runs/repro-f400-lif-seed0"
noval="$runs/repro-f400-lif-noval-seed0"
"$cli" analyze "$f400" --producer lif if --samples 2000 --time-steps 1 2 5 10 20 50 100 200 500 1000 \
  --repeats 5 --threads 1 --no-plots > "$f400/analysis.txt"
"$cli" eval "$noval" --producer if --time-steps 1 2 3 4 5 6 8 10 15 20 30 50 --threads 1 --no-plots \
  --json "$noval/eval-if-time-steps.json"
"$cli" plot "$f400/analysis.json" --out "$figures/f400-convergence.png"
"$cli" plot "$f400/analysis.json" --figure activity --out "$figures/f400-activity.png"
"$cli" plot "$f400/analysis.json" --figure energy --out "$figures/f400-energy.png"
"$cli" plot "$noval/eval-time-steps.json" "$noval/eval-if-time-steps.json" --out "$figures/f400-time-steps.png"

# A two-layer conv model (strided convs, a transposed-conv feedback), 6 epochs: seed 0 of the
# conv runs that scripts/reproduce_results.sh makes (Broyden to 1e-6).
conv="$runs/btol1e-6-conv2-lif-seed0"
if [ ! -f "$conv/summary.json" ]; then
  resume=""
  [ -f "$conv/checkpoint-last.pt" ] && resume="--resume"
  "$cli" train --model "32C3s-64C3s (F32C3u)" --dataset fashion-mnist --epochs 6 --b_tol 1e-6 --threads 1 \
    --out "$conv" $resume
fi
"$cli" analyze "$conv" --producer lif if --samples 1000 --time-steps 1 3 10 30 100 300 --b_solver broyden spide \
  --repeats 1 --threads 1 --no-plots > "$conv/analysis.txt"
"$cli" plot "$conv/analysis.json" --out "$figures/conv2-convergence.png"
"$cli" plot "$conv/analysis.json" --figure activity --out "$figures/conv2-activity.png"
"$cli" plot "$conv/analysis.json" --figure energy --out "$figures/conv2-energy.png"

# The cost of the energy and activity report on the whole F400 test set was measured once by a
# one-off script, since retired: git show 1177209:bench/bench_analysis.py
