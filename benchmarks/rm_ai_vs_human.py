"""Reward model from AI labels vs from human labels (the RLAIF paper's Table 5 comparison).

Splits hh_rlhf_harmless_base.dev.jsonl by prompt hash into a training part and
a test part. The training pairs are labelled by the feedback model
(`rlaif label`, default model); one reward model is trained on those AI labels
and one on the human labels of the same pairs, with the same base model and
settings; both are judged by strict pairwise accuracy on the human labels of
the test part. Also printed: how often the AI labels agree with the humans on
the training pairs (the labels' own quality).

    python benchmarks/rm_ai_vs_human.py --train-pairs 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "human_prefs" / "hh_rlhf_harmless_base.dev.jsonl"


def split(rows: list[dict], train_pairs: int, test_pairs: int) -> tuple[list[dict], list[dict]]:
    """By a hash of the prompt, so no prompt is in both parts."""
    def bucket(row: dict) -> int:
        return int(hashlib.sha256(row["prompt"].strip().lower().encode()).hexdigest(), 16) % 3
    train = [r for r in rows if bucket(r) != 0][:train_pairs]
    test = [r for r in rows if bucket(r) == 0][:test_pairs]
    return train, test


def agreement(p_a: float, human_a: bool) -> float:
    """1 when the AI prefers the human's choice, 0 when not, 0.5 for a tie."""
    return 0.5 if p_a == 0.5 else float((p_a > 0.5) == human_a)


def rlaif(*args: str) -> float:
    started = time.time()
    subprocess.run([sys.executable, "-m", "rlaif", *args], check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train-pairs", type=int, default=200)
    parser.add_argument("--test-pairs", type=int, default=160)
    parser.add_argument("--model", default="default", help="Feedback model.")
    parser.add_argument("--base-model", default="minilm", help="Reward-model base.")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--epochs", default="2")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "rm-bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, test = split(rows, args.train_pairs, args.test_pairs)
    # Put the human-chosen response in slot A for half the pairs, so nothing can key on the slot.
    pairs = []
    for r in train:
        flip = int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % 2
        a, b = (r["rejected"], r["chosen"]) if flip else (r["chosen"], r["rejected"])
        pairs.append({"id": r["id"], "prompt": r["prompt"], "response_a": a, "response_b": b, "human_a": not flip})
    pairs_file = write(args.out / "train_pairs.jsonl", pairs)
    human_train = write(args.out / "train_human.jsonl", train)
    human_test = write(args.out / "test_human.jsonl", test)
    labels = args.out / "train_ai_labels.jsonl"
    label_args = ["label", "--input", str(pairs_file), "--out", str(labels), "--model", args.model,
                  "--principles", "k", "--k", str(args.k)]
    label_seconds = rlaif(*label_args, "--resume") if labels.exists() else rlaif(*label_args)
    ai = {json.loads(line)["id"]: json.loads(line)["p_a"] for line in labels.read_text().splitlines()}
    agree = sum(agreement(ai[p["id"]], p["human_a"]) for p in pairs) / len(pairs)

    results = {}
    for name, data in (("AI labels", labels), ("human labels", human_train)):
        out = args.out / ("rm_ai" if name == "AI labels" else "rm_human")
        seconds = rlaif("train-rm", "--labels", str(data), "--out", str(out), "--base-model", args.base_model,
                        "--eval-human", str(human_test), "--epochs", args.epochs, "--eval-split", "0")
        metrics = json.loads((out / "metrics.json").read_text())
        human = next(iter(metrics["human"].values()))
        results[name] = {"accuracy": human["accuracy"], "n": human["n_decided"], "seconds": round(seconds, 1)}

    print(f"data={args.data.name} train={len(train)} test={len(test)} feedback={args.model} k={args.k} "
          f"base={args.base_model} epochs={args.epochs}")
    print(f"AI labels agree with humans on the training pairs: {agree:.3f} (labelling took {label_seconds:.0f}s)")
    print(f"{'reward model trained on':<26} {'human pairwise acc. on test':>28} {'train secs':>11}")
    for name, r in results.items():
        print(f"{name:<26} {r['accuracy']:>28.3f} {r['seconds']:>11.0f}")
    print(json.dumps({"benchmark": "rm_ai_vs_human", "train": len(train), "test": len(test),
                      "ai_label_agreement": agree, "results": results}))


if __name__ == "__main__":
    main()
