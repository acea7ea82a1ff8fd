#!/usr/bin/env bash
# Reproduce the paper's Figures 1, 2a and 2b (20 sizes 1e3..1e5 x 40 replications each) and write
# one combined report, experiments/paper/REPORT.md, with the figures and per-fit results beside it.
# Usage: bash experiments/paper/reproduce.sh [extra Hydra overrides; fit=newton (the fastest) unless fit=... is given]
set -euo pipefail
args=("$@")
[[ " $* " == *" fit="* ]] || args=(fit=newton "${args[@]}")
cd "$(dirname "$0")/../.."
out=experiments/paper
mkdir -p "$out" outputs/paper
: > outputs/paper/wall_seconds.txt  # wall time of this invocation; runs.json in each run dir keeps every run
for setting in distinguishable nondistinguishable_eta nondistinguishable_nu; do
  start=$(date +%s)
  python -m softmoe_torch.run setting=$setting progress=false hydra.run.dir=outputs/paper/$setting "${args[@]}"
  echo "$setting $(( $(date +%s) - start ))" >> outputs/paper/wall_seconds.txt
done
python experiments/paper/combine_report.py outputs/paper "$out"
mkdir -p "$out/runs"
for setting in distinguishable nondistinguishable_eta nondistinguishable_nu; do
  cp outputs/paper/$setting/results.csv "$out/runs/$setting.csv"
done
cp outputs/paper/wall_seconds.txt "$out/runs/"
