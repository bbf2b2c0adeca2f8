#!/usr/bin/env bash
# Reproduces results/clean: clean minilm-l6, `paper` downstream preset, clean-model control for the
# POR/BadPre words (cf tq mn bb mb) and the NeuBA symbols (≈ ≡ ∈ ⊆ ⊕ ⊗). About 1 hour on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
R=results/clean
for s in 0 1 2; do ptmbench finetune --model minilm-l6 --dataset sst2 --seed "$s" --preset paper --triggers por,neuba --results $R; done
for d in offenseval agnews hsol enron; do ptmbench finetune --model minilm-l6 --dataset $d --seed 0 --preset paper --triggers por,neuba --results $R; done
ptmbench table $R
