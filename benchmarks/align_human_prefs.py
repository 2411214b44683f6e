"""AI labeller alignment with human labels, on every file of shared/data/human_prefs.

Runs `rlaif align` (default model unless --model) on the first N usable pairs of
each file and prints, per file: alignment with its 95% interval, the alignment
of each single order (what swapping buys), position bias, and the random /
always-longer / always-shorter baselines on the same pairs. Reports are kept
in --out, so a rerun resumes and costs nothing.

    python benchmarks/align_human_prefs.py --pairs 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "human_prefs"


def run_align(human: Path, out: Path, args: argparse.Namespace) -> tuple[dict, float]:
    command = [sys.executable, "-m", "rlaif", "align", "--human", str(human), "--out", str(out),
               "--limit", str(args.pairs), "--model", args.model, "--constitution", args.constitution,
               "--principles", "k", "--k", str(args.k), "--template", args.template, "--no-plots"]
    started = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text()), time.time() - started


def ci(rate: dict) -> str:
    return f"{rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--pairs", type=int, default=60, help="Pairs per file (the first N usable ones).")
    parser.add_argument("--model", default="default")
    parser.add_argument("--constitution", default="cai-harmless")
    parser.add_argument("--k", type=int, default=4, help="Principles sampled per pair.")
    parser.add_argument("--template", default="cai-choice", help="Choice template for the labeller.")
    parser.add_argument("--files", default="*", help="Glob of the human files to use, e.g. 'hh_*'.")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "align-bench")
    args = parser.parse_args()
    files = sorted(args.data_dir.glob(f"{args.files}.jsonl"))
    if not files:
        sys.exit(f"No .jsonl files in {args.data_dir}; pass --data-dir.")
    header = (f"{'file':<28} {'n':>4} {'alignment [95% CI]':>24} {'A-first only':>13} {'B-first only':>13} "
              f"{'same slot':>10} {'random':>7} {'longer':>7} {'shorter':>8} {'secs':>6}")
    print(f"model={args.model} constitution={args.constitution} template={args.template} k={args.k} "
          f"pairs/file={args.pairs}")
    print(header)
    rows = []
    for human in files:
        report, seconds = run_align(human, args.out / human.stem, args)
        base = report["baselines"]
        row = {"file": human.stem, "n": report["n_scored"], "alignment": report["alignment"],
               "ab": report["alignment_by_order"]["ab"]["value"], "ba": report["alignment_by_order"]["ba"]["value"],
               "same_slot": report["position_bias"]["same_slot"]["value"], "favoured": report["position_bias"]["favoured"],
               "always_longer": base["always_longer"]["value"], "always_shorter": base["always_shorter"]["value"],
               "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"{row['file']:<28} {row['n']:>4} {ci(row['alignment']):>24} {row['ab']:>13.3f} {row['ba']:>13.3f} "
              f"{row['same_slot']:>10.3f} {0.5:>7.3f} {row['always_longer']:>7.3f} {row['always_shorter']:>8.3f} "
              f"{row['seconds']:>6.0f}")
    print(json.dumps({"benchmark": "align_human_prefs", "model": args.model, "template": args.template, "k": args.k,
                      "rows": rows}))


if __name__ == "__main__":
    main()
