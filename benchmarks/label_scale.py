"""Labelling at scale: memory that does not grow with the input, and one process vs two.

Part 1 (memory): `rlaif label` on 10k, 100k and 1M synthetic pairs, each size in
its own process, through the CLI's own path (the input streamed, the output
never held, the summary read back in one pass). The feedback model is a fake
back end registered as `fake:` for the run: a plain-Python word tokenizer and
rlaif's own templates, no weights, log-probs from arithmetic on the token ids; so the
figures are rlaif's own cost (reading, checking, rendering, tokenising,
writing), not a model's. It prints each size's peak RSS (getrusage) and
whether the largest stays within 20% of the smallest.

Part 2 (throughput): the real default model (Gemma 3 270M) labels the first
--pairs pairs of hh-rlhf harmless (response_a = chosen, response_b = rejected),
no cache, two ways: one process with two threads, and `accelerate launch
--multi_gpu --num_processes 2` (on CPU: two processes over gloo, one thread
each by the per-rank default), side by side, with the merged files compared.

    flock /tmp/rlaif-heavy.lock python benchmarks/label_scale.py
    python benchmarks/label_scale.py --sizes 10000,100000 --skip-model   # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "human_prefs" / "hh_rlhf_harmless_base.dev.jsonl"
WORDS = ("the a an is was be to of and in that have it for not on with he as you do at this but his by from they we "
         "say her she or will my one all would there their what so up out if about who get which go me when make can "
         "like time no just him know take people into year your good some could them see other than then now look "
         "only come its over think also back after use two how our work first well way even new want because any").split()


# -- the fake back end (child side) ---------------------------------------------------------------------------------


@dataclass
class FakeOptions:
    """No options: the fake back end has no settings."""


class FakeBackend:
    """The Backend protocol on a real tokenizer, without a model: log-probs are arithmetic on the token ids."""

    context_length = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.model_id = "fake-scale@0"

    def token_logprobs(self, requests):
        return [[-1.0 - ((token * 7 + position + len(r.ids)) % 13) / 10 for position, token in r.reads] for r in requests]

    def generate(self, prompts, settings):
        return ["" for _ in prompts]


class FakeFactory:
    name = "fake"
    options_class = FakeOptions

    def accepts(self, spec: str) -> bool:
        return False

    def load(self, spec: str, options: FakeOptions) -> FakeBackend:
        return FakeBackend(WordTokenizer())


class WordTokenizer:
    """rlaif's Tokenizer protocol in plain Python: a token is a word with the blanks before it, ids given
    on first sight, so decode(encode(text)) == text (cheaper per prompt than a real tokenizer)."""

    bos_token = None
    eos_token = "<eos>"
    chat_template = None
    unk_token_id = None
    all_special_tokens = ["<eos>"]
    _TOKEN = re.compile(r"\s*\S+")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {"<eos>": 0}
        self.words = ["<eos>"]

    def _id(self, word: str) -> int:
        found = self.ids.get(word)
        if found is None:
            found = self.ids[word] = len(self.words)
            self.words.append(word)
        return found

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._id(word) for word in self._TOKEN.findall(text)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.words[i] for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.ids)

    def get_added_vocab(self) -> dict[str, int]:
        return {}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        raise ValueError("no chat template")


def child_label(input_path: str, out: str) -> None:
    """Run `rlaif label` in this process with `fake:` registered; print time and peak RSS as one JSON line."""
    import rlaif.backends as backends  # noqa: PLC0415
    from rlaif.cli import cli  # noqa: PLC0415

    builtin = backends.registry
    backends.registry = lambda: {**builtin(), "fake": FakeFactory()}
    started = time.time()
    try:
        cli.main(["label", "--input", input_path, "--out", out, "--model", "fake:scale", "--principles", "one",
                  "--chunk-pairs", "1024", "--no-cache", "--overwrite"], standalone_mode=False)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"seconds": round(time.time() - started, 2), "peak_rss": peak}), flush=True)


# -- part 1: memory -------------------------------------------------------------------------------------------------


def write_pairs(path: Path, n: int) -> None:
    """n distinct synthetic pairs (about 60 words each), with ids."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            words = [WORDS[(i * 31 + j * 7 + (i >> (j % 16))) % len(WORDS)] for j in range(60)]
            handle.write(json.dumps({"id": f"s{i:07d}", "prompt": f"Human: {' '.join(words[:20])}?\n\nAssistant:",
                                     "response_a": " ".join(words[20:40]), "response_b": " ".join(words[40:])}) + "\n")


def measure_memory(sizes: list[int], work: Path) -> list[dict]:
    results = []
    for n in sizes:
        data, out = work / f"pairs-{n}.jsonl", work / f"labels-{n}.jsonl"
        write_pairs(data, n)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1"}
        proc = subprocess.run([sys.executable, __file__, "--child-label", str(data), str(out)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {n}-pair run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        lines = sum(1 for _ in out.open("rb"))
        results.append({"pairs": n, "labels_written": lines, "output_bytes": out.stat().st_size, **figures})
        print(f"  {n:>9,} pairs: {figures['seconds']:8.1f} s  {n / figures['seconds']:8.0f} pairs/s  "
              f"peak RSS {figures['peak_rss'] / 2**20:7.1f} MiB  ({lines:,} labels, "
              f"{out.stat().st_size / 2**20:,.0f} MiB written)", flush=True)
        data.unlink()
        out.unlink()
    return results


# -- part 2: one process vs two ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_default(pairs: int, out: Path, processes: int) -> dict:
    args = ["-m", "rlaif", "label", "--input", str(DATA), "--column-map", "response_a=chosen", "--column-map",
            "response_b=rejected", "--limit", str(pairs), "--out", str(out), "--no-cache", "--overwrite"]
    env = {k: v for k, v in os.environ.items() if k != "RLAIF_THREADS"}  # threads by the per-rank default
    env.update(PYTHONPATH=str(ROOT), TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(free_port()), *args]
    started = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    labelling = meta["seconds_this_run"]  # from model ready to the last label (the slowest rank's, when several)
    return {"processes": processes, "threads_each": 2 // processes, "wall_seconds": round(wall, 1),
            "model_load_seconds": meta["model_load_seconds"], "labelling_seconds": round(labelling, 1),
            "pairs": meta["pairs"], "labels_per_s": round(meta["pairs"] / labelling, 3),
            "world_size": meta.get("world_size")}


def compare_processes(pairs: int, work: Path) -> list[dict]:
    one, two = work / "one.jsonl", work / "two.jsonl"
    results = [label_default(pairs, one, 1), label_default(pairs, two, 2)]
    a = [json.loads(line) for line in one.read_text().splitlines()]
    b = [json.loads(line) for line in two.read_text().splitlines()]
    same_ids = [r["id"] for r in a] == [r["id"] for r in b]
    delta = max(abs(x["p_a"] - y["p_a"]) for x, y in zip(a, b)) if same_ids else math.nan
    for r in results:
        print(f"  {r['processes']} process(es) x {r['threads_each']} thread(s): {r['labelling_seconds']:6.1f} s "
              f"labelling, {r['labels_per_s']:.3f} labels/s (model load {r['model_load_seconds']:.1f} s, "
              f"wall {r['wall_seconds']:.1f} s)", flush=True)
    print(f"  the two files hold the same pairs in the same order: {same_ids}; max |delta p_a| {delta:.2e}")
    results.append({"same_ids_in_order": same_ids, "max_abs_delta_p_a": delta})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Pair counts of the memory runs.")
    parser.add_argument("--pairs", type=int, default=24, help="hh-rlhf pairs for the one-vs-two-process runs.")
    parser.add_argument("--skip-model", action="store_true", help="Only the memory runs (no default model).")
    parser.add_argument("--child-label", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_label:
        child_label(*args.child_label)
        return
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="label-scale-") as tmp:
        print("Peak memory of `rlaif label` (fake back end, word tokenizer, --principles one):", flush=True)
        memory = measure_memory([int(s) for s in args.sizes.split(",")], Path(tmp))
        peaks = [r["peak_rss"] for r in memory]
        growth = max(peaks) / min(peaks) - 1
        print(f"  largest / smallest peak RSS: +{growth:.1%} ({'flat: within 20%' if growth <= 0.2 else 'NOT flat'})")
        report["memory"] = memory
        report["rss_growth"] = round(growth, 4)
        if not args.skip_model:
            print(f"\nThe default model on {args.pairs} hh-rlhf pairs (k=4, both orders, no cache):", flush=True)
            report["processes"] = compare_processes(args.pairs, Path(tmp))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
