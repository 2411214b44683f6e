"""Labelling throughput: the naive way, a plain batched forward, and rlaif's engine, on the same pairs.

Labels N pairs of hh-rlhf harmless (response_a = chosen, response_b =
rejected) with the default model, a fixed set of k principles and both orders,
three ways, each in its own process (so peak memory does not mix):

  naive   what a user writes first: per prompt `model.generate(max_new_tokens=1,
          output_scores=True)`, then P(A) / (P(A) + P(B)) from the full-vocabulary scores
          (transformers' generate computes logits at the last position only);
  naive-full  (only with --ways) the same with logits at every position, as
          generate did before transformers 4.45;
  plain   the prompts in left-padded batches, one forward pass each, full logits
          (every position), the last position read;
  engine  rlaif's Labeller: logits only where read, length-bucketed batches,
          shared prefixes (conversation, then conversation + principle) computed once;
  engine-plain  (only with --ways) the same without prefix sharing.

It checks that the three give the same probabilities, and prints labels/s,
prompt tokens/s, peak memory, the ratios, and the engine's effective FLOP/s
(2 x non-embedding parameters x tokens it computed / seconds) against the
machine's measured float32 matmul FLOP/s with the same threads. A JSON line ends
the output.

    PYTHONPATH=. python benchmarks/label_throughput.py --pairs 12 --k 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from children import run_ways  # benchmarks/children.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "human_prefs" / "hh_rlhf_harmless_base.dev.jsonl"
WAYS = ("naive", "naive-full", "plain", "engine-plain", "engine")
DEFAULT_WAYS = "naive,plain,engine"
GOALS = {"naive": 5.0, "plain": 2.5}  # the targets: engine speed-up over these ways


def load_pairs(path: Path, n: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [{"id": r["id"], "prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]}
            for r in rows]


def jobs_and_prompts(pairs, principles, template) -> tuple[list[tuple[int, str, bool]], list[str]]:
    """(pair index, principle id, swapped) and the rendered prompt, in the Labeller's order."""
    from rlaif.label import format_conversation  # noqa: PLC0415

    jobs, prompts = [], []
    for index, pair in enumerate(pairs):
        for principle in principles:
            for swapped in (False, True):
                first, second = (pair["response_b"], pair["response_a"]) if swapped else (pair["response_a"], pair["response_b"])
                jobs.append((index, principle.id, swapped))
                prompts.append(template.render(conversation=format_conversation(pair["prompt"]), principle=principle.text,
                                               response_a=first, response_b=second, few_shot=[]))
    return jobs, prompts


def option_ids(tokenizer, template) -> list[list[int]]:
    """Token ids of each option's spellings; the naive ways read one token, so each must be one token."""
    from rlaif.options import spell  # noqa: PLC0415

    out = []
    for option, texts in template.option_spellings().items():
        ids = [spell(tokenizer, text) for text in texts]
        if any(len(i) != 1 for i in ids):
            raise SystemExit(f"Option {option!r} has a multi-token spelling; this benchmark needs one-token options.")
        out.append(sorted({i[0] for i in ids}))
    return out


def slot_a(logprobs, options: list[list[int]], swapped: bool) -> float:
    """P(slot holding A) normalised over the two options, from one full-vocabulary log-prob row."""
    first, second = (logprobs[ids].exp().sum().item() for ids in options)
    return (second if swapped else first) / (first + second)


def run_naive(model, tokenizer, prompts, jobs, options, full: bool = False) -> tuple[list[float], dict]:
    """One `generate` call per prompt. Since transformers 4.45 generate keeps only the last position's
    logits in the prefill; `full` passes logits_to_keep=0, what it computed before (every position)."""
    import torch  # noqa: PLC0415

    out = []
    extra = {"logits_to_keep": 0} if full else {}
    for prompt, (_, _, swapped) in zip(prompts, jobs):
        enc = tokenizer(prompt, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id, **extra)
        out.append(slot_a(torch.log_softmax(gen.scores[0][0].float(), dim=-1), options, swapped))
    return out, {}


def run_plain(model, tokenizer, prompts, jobs, options, args) -> tuple[list[float], dict]:
    import torch  # noqa: PLC0415

    tokenizer.padding_side = "left"
    out = []
    for start in range(0, len(prompts), args.plain_batch):
        enc = tokenizer(prompts[start:start + args.plain_batch], return_tensors="pt", padding=True)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**enc, position_ids=positions, use_cache=False).logits  # [rows, width, vocab]
        last = torch.log_softmax(logits[:, -1].float(), dim=-1)
        out += [slot_a(last[row], options, jobs[start + row][2]) for row in range(last.shape[0])]
    return out, {}


def run_engine(backend, pairs, jobs, principle_ids, template: str) -> tuple[list[float], dict]:
    from rlaif.label import LabelConfig, Labeller  # noqa: PLC0415

    config = LabelConfig(principles="all", only=tuple(principle_ids), no_cache=True, template=template)
    labels = Labeller(config, backend).label(pairs)
    out = [labels[index].by_principle_orders[pid][int(swapped)] for index, pid, swapped in jobs]
    stats = backend.stats
    return out, {"computed_tokens": stats.tokens, "padded_tokens": stats.padded_tokens, "forwards": stats.forwards}


def matmul_flops(n: int = 2048, reps: int = 4, trials: int = 5) -> list[float]:
    """float32 FLOP/s of an n x n matmul, one value per trial (several reps each)."""
    import torch  # noqa: PLC0415

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    values = []
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(reps):
            a @ b
        values.append(2 * n ** 3 * reps / (time.perf_counter() - started))
    return values


def run_way(way: str, args: argparse.Namespace, queue) -> None:
    """Child process: load the model, warm up, time one way, report its numbers."""
    import torch  # noqa: PLC0415

    from rlaif.backends.hf import HFBackend  # noqa: PLC0415
    from rlaif.constitution import load_constitution  # noqa: PLC0415
    from rlaif.templates import load_template  # noqa: PLC0415

    backend = HFBackend.load(args.model, threads=args.threads, batch_tokens=args.batch_tokens)
    model, tokenizer = backend.model, backend.tokenizer
    constitution = load_constitution(args.constitution)
    principles = constitution.principles[:args.k]
    template = load_template(args.template)
    pairs = load_pairs(args.data, args.pairs)
    jobs, prompts = jobs_and_prompts(pairs, principles, template)
    options = option_ids(tokenizer, template)
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokenizer.encode("Human: hello")]), use_cache=False)  # warm-up, same for all
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        flops_before = matmul_flops() if way == "engine" else []
        load_before, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        if way.startswith("naive"):
            values, extra = run_naive(model, tokenizer, prompts, jobs, options, full=way == "naive-full")
        elif way == "plain":
            values, extra = run_plain(model, tokenizer, prompts, jobs, options, args)
        else:
            backend.share_prefix = way == "engine"
            values, extra = run_engine(backend, pairs, jobs, [p.id for p in principles], args.template)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        flops_after = matmul_flops() if way == "engine" else []
    nonembedding = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name and "lm_head" not in name)
    queue.put({
        "way": way, "seconds": wall, "cpu_seconds": cpu, "values": values, "threads": torch.get_num_threads(),
        "prompt_tokens": sum(len(tokenizer.encode(p)) for p in prompts), "prompts": len(prompts),
        "rss_loaded_mb": rss_loaded / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load_before, "load_after": os.getloadavg()[0], "nonembedding_params": nonembedding,
        "matmul_flops": flops_before + flops_after, "pairs": len(pairs), "pair_index": [j[0] for j in jobs], **extra,
    })


def pair_means(values: list[float], pair_index: list[int]) -> list[float]:
    """p_a per pair: the mean over principles of (q_ab + q_ba) / 2 = the mean over its prompts."""
    sums: dict[int, list[float]] = {}
    for value, index in zip(values, pair_index):
        sums.setdefault(index, []).append(value)
    return [sum(v) / len(v) for _, v in sorted(sums.items())]


def report(results: dict[str, dict], args: argparse.Namespace) -> dict:
    pairs, jobs = results["engine"]["pairs"], results["engine"]["pair_index"]
    print(f"\n{'way':<10} {'seconds':>8} {'cpu s':>7} {'labels/s':>9} {'prompt tok/s':>13} {'computed tok':>13} "
          f"{'GFLOP/s*':>9} {'peak RSS MB':>12} {'(after load)':>13} {'load avg':>10}")
    for way, r in results.items():
        computed = r.get("computed_tokens", r["prompt_tokens"])
        r.update(labels_per_s=pairs / r["seconds"], tokens_per_s=r["prompt_tokens"] / r["seconds"],
                 gflops=2 * r["nonembedding_params"] * computed / r["seconds"] / 1e9)
        print(f"{way:<10} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} {r['labels_per_s']:>9.3f} {r['tokens_per_s']:>13.0f} "
              f"{computed:>13d} {r['gflops']:>9.1f} {r['rss_peak_mb']:>12.0f} {r['rss_loaded_mb']:>13.0f} "
              f"{r['load_before']:>4.1f}->{r['load_after']:<4.1f}")
    print("* 2 x non-embedding parameters x tokens computed / seconds (the vocabulary projection and attention "
          "are not counted)")
    base = results["engine"]
    ratios = {w: results[w]["seconds"] / base["seconds"] for w in results if w != "engine"}
    diffs = {w: max(abs(a - b) for a, b in zip(results[w]["values"], base["values"])) for w in results if w != "engine"}
    pair_diff = {w: max(abs(a - b) for a, b in zip(pair_means(results[w]["values"], jobs), pair_means(base["values"], jobs)))
                 for w in results if w != "engine"}
    for w in ratios:
        print(f"engine is {ratios[w]:.2f}x faster than {w} (wall), {results[w]['cpu_seconds'] / base['cpu_seconds']:.2f}x "
              f"(cpu time); max |dq| per prompt {diffs[w]:.2e}, per pair p_a {pair_diff[w]:.2e}")
    for w, goal in GOALS.items():
        if w in ratios:
            print(f"goal: engine >= {goal}x faster than {w}: {'met' if ratios[w] >= goal else 'NOT met'} ({ratios[w]:.2f}x)")
    same = all(d <= args.tolerance for d in diffs.values())
    print(f"same probabilities within {args.tolerance:g}: {'yes' if same else 'NO'}")
    matmul = statistics.median(base["matmul_flops"]) / 1e9
    print(f"matmul float32 2048x2048, {base['threads']} threads: median {matmul:.1f} GFLOP/s "
          f"(trials {', '.join(f'{v / 1e9:.0f}' for v in base['matmul_flops'])}); engine effective "
          f"{base['gflops']:.1f} GFLOP/s = {base['gflops'] / matmul:.0%} of it, on {base['computed_tokens']} computed "
          f"tokens ({base['prompt_tokens']} prompt tokens, {base['forwards']} forward passes); goal >= 50%: "
          f"{'met' if base['gflops'] >= matmul / 2 else 'NOT met'}")
    return {"pairs": pairs, "k": args.k, "threads": base["threads"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "speedup": {f"engine_vs_{w}": v for w, v in ratios.items()}, "max_abs_diff": diffs, "same_probabilities": same, "matmul_gflops": matmul,
            "engine_gflops": base["gflops"], "engine_share_of_matmul": base["gflops"] / matmul,
            "ways": {w: {k: v for k, v in r.items() if k not in ("values", "pair_index")} for w, r in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="Human preference JSONL (prompt, chosen, rejected).")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--k", type=int, default=4, help="The first k principles of the constitution, for every pair.")
    parser.add_argument("--model", default="default")
    parser.add_argument("--constitution", default="cai-harmless")
    parser.add_argument("--template", default="cai-choice",
                        help="Choice template (cai-choice-late puts the principle after the options).")
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads (default: rlaif's choice).")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="The engine's token budget per batch.")
    parser.add_argument("--plain-batch", type=int, default=4, help="Prompts per batch of the plain way.")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="Largest allowed probability difference.")
    parser.add_argument("--ways", default=DEFAULT_WAYS,
                        help="Comma-separated ways to run, of naive, naive-full (generate with every position's "
                             "logits, as before transformers 4.45), plain, engine-plain (no prefix sharing) and engine.")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found; pass --data with a JSONL of prompt/chosen/rejected rows.")
    ways = [w for w in WAYS if w in args.ways.split(",")]
    if "engine" not in ways:
        raise SystemExit("--ways must include engine (the ratios are against it).")
    # Spinning OpenMP threads stall when another process holds a core; passive waiting is set
    # before torch starts in each child (override by exporting OMP_WAIT_POLICY yourself).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print(f"label throughput: {args.pairs} pairs x {args.k} principles x 2 orders, template {args.template}, model {args.model}, "
          f"cpus {os.cpu_count()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average {os.getloadavg()}")
    results = run_ways(ways, run_way, args)
    summary = report(results, args)
    print(f"load average at the end {os.getloadavg()} (other processes share these cores: timings are noisy)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
