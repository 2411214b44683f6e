"""Generation throughput: the naive way, the path as of git commit ec1b947, and rlaif's batched decoding.

`rlaif generate`'s workload (the prompts of examples/prompts.jsonl x n samples x max_new_tokens, the default
model through `rlaif.backends.load_backend`), decoded three ways, each in its own process (peak memory
does not mix):

  naive    what a user writes first: per prompt and sample, `model.generate` at batch 1 until the model's
           eos or max_new_tokens; the sample is drawn with rlaif's seeded Gumbel-max processor, so its
           text can be compared with the others';
  ec1b947  the code as of ec1b947, reproduced here: PairGenerator.samples calls the back end once per
           sample index with the chunk's prompts, and the back end runs `model.generate` on up to
           batch_tokens // 512 rows, every row padded along until the last one ends, no stop strings;
  new      PairGenerator.samples now: one call for a chunk's prompts x n samples; the back end decodes
           them in token-budget batches, shares each prompt's prefill and drops a row as soon as it ends
           (eos, an end-of-turn token, a new speaker turn).
  new-bf16 (only with --ways) the same with bfloat16 weights.

Each way's raw continuations are cut the way the new path cuts them (at its end tokens and stop strings,
then trim_response), so the samples the stage keeps can be compared. It prints seconds, model calls,
tokens computed (rows x decode steps) and tokens kept (those of the samples the stage keeps: the same work
for every way, so kept tokens/s gives the speed-up), peak RSS, the ratios, and the weight-read bandwidth
each way achieved (weight bytes x model calls / seconds) against the machine's best memory bandwidth,
measured in the same run before and after the ways (a sum over a 1 GiB tensor: reads only, as decoding
reads its weights; and a copy, read + write; same threads, in a process of its own): read bandwidth /
weight bytes is the physical limit of batch-1 decoding, in tokens computed a second.

    flock /tmp/rlaif-heavy.lock python benchmarks/generate_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

from children import in_child, run_ways  # benchmarks/children.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "examples" / "prompts.jsonl"
WAYS = ("naive", "ec1b947", "new", "new-bf16")
DEFAULT_WAYS = "naive,ec1b947,new"
GOAL = 4.0  # the issue's target: new >= 4x naive


def gumbel_processor(generators: list, warpers: list):
    """The per-row seeded Gumbel-max processor of rlaif's back end (as of ec1b947)."""
    import torch  # noqa: PLC0415

    def gumbel_max(input_ids, scores):
        for warper in warpers:
            scores = warper(input_ids, scores)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in generators])
        return scores - torch.log(-torch.log(u.clamp_min(1e-20)))

    return gumbel_max


def hf_generate(model, tokenizer, prompts: list[str], per: list, step: int) -> list[list[int]]:
    """ec1b947's HFBackend._generate_group, returning token ids: `model.generate` on `step` rows at a time."""
    import torch  # noqa: PLC0415
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper  # noqa: PLC0415

    from rlaif.backends.hf.generation import row_seed  # noqa: PLC0415 (sha256 of "seed:prompt", as then)

    settings = per[0]
    tokenizer.padding_side = "left"
    bos = tokenizer.bos_token
    sample = settings.temperature > 0
    warpers = [TemperatureLogitsWarper(settings.temperature)] if sample else []
    warpers += [TopPLogitsWarper(settings.top_p)] if sample and settings.top_p < 1.0 else []
    out_ids: list[list[int]] = []
    for start in range(0, len(prompts), step):
        chunk = prompts[start:start + step]
        ids = [tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in chunk]
        enc = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        processors = LogitsProcessorList()
        if sample:
            rows = [torch.Generator().manual_seed(row_seed(s.seed, p)) for p, s in zip(chunk, per[start:start + step])]
            processors.append(gumbel_processor(rows, warpers))
        out = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=False, temperature=None,
                             top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id, logits_processor=processors)
        out_ids += out[:, enc["input_ids"].shape[1]:].tolist()
    return out_ids


def kept_text(tokenizer, ids: list[int], settings, model_eos, plain: bool) -> str:
    """A raw continuation as the new path keeps it: up to its first end token, cut at a stop, trimmed."""
    from rlaif.backends.hf.generation import cut_at_stop, stop_token_ids  # noqa: PLC0415
    from rlaif.text import trim_response  # noqa: PLC0415

    ends = set(stop_token_ids(tokenizer, [settings], model_eos))
    cut = next((k for k, token in enumerate(ids) if token in ends), len(ids))
    text = cut_at_stop(tokenizer.decode(ids[:cut], skip_special_tokens=True), settings.stop)
    return trim_response(text, settings.stop, named_turns=plain)


def run_old(backend, config, prompts, way: str, batch_tokens: int) -> list[list[str]]:
    """naive (batch 1, one call per sample) or ec1b947 (one call per sample index over the prompts)."""
    from rlaif.generate import sample_settings  # noqa: PLC0415
    from rlaif.text import render_prompt, resolve_prompt_format, response_stops  # noqa: PLC0415

    tokenizer, model = backend.tokenizer, backend.model
    fmt = resolve_prompt_format(tokenizer, config.prompt_format)
    rendered = [render_prompt(tokenizer, p["prompt"], fmt) for p in prompts]
    stops = response_stops(tokenizer)
    model_eos = model.generation_config.eos_token_id
    out = [[""] * config.n for _ in prompts]
    for i in range(config.n):
        settings = sample_settings(config, i, stops)
        if way == "naive":
            raw = [hf_generate(model, tokenizer, [p], [settings], 1)[0] for p in rendered]
        else:
            raw = hf_generate(model, tokenizer, rendered, [settings] * len(rendered), max(1, batch_tokens // 512))
        for k, ids in enumerate(raw):
            out[k][i] = kept_text(tokenizer, ids, settings, model_eos, fmt == "plain")
    return out


def memory_bandwidth(threads: int, gib: float = 1.0, trials: int = 8) -> dict[str, list[float]]:
    """Bytes/s of DRAM, one value per trial: `read` sums a 1 GiB tensor (what decoding does to its weights),
    `copy` copies it (each byte read once and written once)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    src = torch.ones(int(gib * 2 ** 30) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    src.sum()
    values: dict[str, list[float]] = {"read": [], "copy": []}
    for _ in range(trials):
        started = time.perf_counter()
        src.sum()
        values["read"].append(src.numel() * 4 / (time.perf_counter() - started))
        started = time.perf_counter()
        dst.copy_(src)
        values["copy"].append(2 * src.numel() * 4 / (time.perf_counter() - started))
    return values


def run_way(way: str, args: argparse.Namespace, queue) -> None:
    """Child process: load the model, warm up, time one way, report its numbers."""
    import torch  # noqa: PLC0415

    from rlaif.backends import load_backend  # noqa: PLC0415
    from rlaif.generate import GenerateConfig, PairGenerator  # noqa: PLC0415
    from rlaif.io import read_jsonl  # noqa: PLC0415

    options = {"batch_tokens": args.batch_tokens, "dtype": "bfloat16" if way == "new-bf16" else args.dtype}
    if args.threads:
        options["threads"] = args.threads
    backend = load_backend(args.model, options)
    prompts = [{"id": str(k), **r} for k, r in enumerate(read_jsonl(args.prompts))][:args.n_prompts]
    config = GenerateConfig(model=args.model, n=args.n, pairs="all", max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed, no_cache=True)
    calls = {"forwards": 0, "step_rows": 0}

    def count(_module, _args, kwargs):  # every model call; a decode step feeds one token a row
        calls["forwards"] += 1
        calls["step_rows"] += kwargs["input_ids"].shape[0] if kwargs["input_ids"].shape[1] == 1 else 0

    model = backend.model
    with torch.inference_mode():
        model(input_ids=torch.tensor([backend.tokenizer.encode("Human: hello")]), use_cache=False)  # warm-up
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hook = model.register_forward_pre_hook(count, with_kwargs=True)
        load_before, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        if way.startswith("new"):
            samples = PairGenerator(config, backend).samples(prompts)
        else:
            samples = run_old(backend, config, prompts, way, args.batch_tokens)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hook.remove()
    kept = sum(len(backend.tokenizer.encode(s, add_special_tokens=False)) for row in samples for s in row)
    computed = calls["step_rows"] + args.n_prompts * args.n  # each sample's first token comes from a prefill
    queue.put({
        "way": way, "seconds": wall, "cpu_seconds": cpu, "samples": samples, "kept_tokens": kept,
        "computed_tokens": computed,
        "threads": torch.get_num_threads(), "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()), **calls,
        "rss_loaded_mb": rss_loaded / 1024,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_before": load_before, "load_after": os.getloadavg()[0],
    })



def default_threads() -> int:
    from rlaif.backends.hf import default_threads as threads  # noqa: PLC0415

    return int(os.environ.get("RLAIF_THREADS") or 0) or threads()


def same_samples(a: list[list[str]], b: list[list[str]]) -> int:
    return sum(x == y for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def report(results: dict[str, dict], bandwidth: dict[str, list[float]], args: argparse.Namespace) -> dict:
    print(f"\n{'way':<9} {'dtype':>8} {'seconds':>8} {'cpu s':>7} {'calls':>6} {'computed':>9} {'tok/s':>7} "
          f"{'kept':>6} {'kept tok/s':>11} {'weight GB/s':>12} {'peak RSS MB':>12} {'load avg':>10}")
    for way, r in results.items():
        r.update(computed_per_s=r["computed_tokens"] / r["seconds"], kept_per_s=r["kept_tokens"] / r["seconds"],
                 read_gbs=r["weight_bytes"] * r["forwards"] / r["seconds"] / 1e9)
        print(f"{way:<9} {r['dtype']:>8} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} {r['forwards']:>6d} "
              f"{r['computed_tokens']:>9d} {r['computed_per_s']:>7.1f} {r['kept_tokens']:>6d} {r['kept_per_s']:>11.1f} "
              f"{r['read_gbs']:>12.1f} {r['rss_peak_mb']:>12.0f} {r['load_before']:>4.1f}->{r['load_after']:<4.1f}")
    print("computed: tokens decoded (rows x steps, finished rows still padded along included); kept: tokens of the "
          "samples the stage keeps (the same work for every way)")
    read, copy = (max(bandwidth[kind]) / 1e9 for kind in ("read", "copy"))
    threads = next(iter(results.values()))["threads"]
    print(f"memory bandwidth ({threads} threads, 1 GiB, trials before and after the ways): read (sum) best "
          f"{read:.1f} GB/s, median {statistics.median(bandwidth['read']) / 1e9:.1f} (trials "
          f"{', '.join(f'{v / 1e9:.1f}' for v in bandwidth['read'])}); copy (read + write) best {copy:.1f} GB/s")
    for way, r in results.items():
        r["batch1_bound_tokens_per_s"] = bound = read * 1e9 / r["weight_bytes"]
        print(f"  {way}: weights {r['weight_bytes'] / 1e9:.2f} GB ({r['dtype']}): batch-1 decoding is bound at "
              f"{bound:.1f} tokens/s; it read weights at {r['read_gbs']:.1f} GB/s = {r['read_gbs'] / read:.0%} of the "
              f"read bandwidth and computed {r['computed_per_s']:.1f} tokens/s = {r['computed_per_s'] / bound:.2f}x that bound")
    ratios: dict[str, float] = {}
    new = results.get("new")
    for way in (w for w in results if w != "new" and new):
        ratios[way] = new["kept_per_s"] / results[way]["kept_per_s"]
        print(f"new / {way}: {ratios[way]:.2f}x (kept tokens/s, = time ratio); samples identical "
              f"{same_samples(new['samples'], results[way]['samples'])}/{args.n_prompts * args.n}")
    if "naive" in ratios:
        print(f"goal: new >= {GOAL}x naive: {'met' if ratios['naive'] >= GOAL else 'NOT met'} ({ratios['naive']:.2f}x)")
    return {"prompts": args.n_prompts, "n": args.n, "max_new_tokens": args.max_new_tokens, "read_gbs": read,
            "copy_gbs": copy, "ratios_new_over": ratios,
            "ways": {w: {k: v for k, v in r.items() if k != "samples"} for w, r in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="JSONL of {\"prompt\": ...} records.")
    parser.add_argument("--n-prompts", type=int, default=10)
    parser.add_argument("--n", type=int, default=4, help="Samples a prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="float32", help="Weights of every way but new-bf16.")
    parser.add_argument("--threads", type=int, default=None, help="Intra-op threads (default: rlaif's choice).")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="The back end's token budget.")
    parser.add_argument("--ways", default=DEFAULT_WAYS, help=f"Comma-separated, of {', '.join(WAYS)}.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the summary (with the samples) here.")
    args = parser.parse_args()
    if not args.prompts.exists():
        raise SystemExit(f"{args.prompts} not found; pass --prompts with a JSONL of {{\"prompt\": ...}} rows.")
    ways = [w for w in WAYS if w in args.ways.split(",")]
    if not ways:
        raise SystemExit(f"--ways names none of {', '.join(WAYS)}.")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall on shared cores
    print(f"generate throughput: {args.n_prompts} prompts x {args.n} samples x {args.max_new_tokens} new tokens, model "
          f"{args.model}, cpus {os.cpu_count()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load {os.getloadavg()}")
    bandwidth = in_child(memory_bandwidth, args.threads or default_threads())
    results = run_ways(ways, run_way, args)
    for kind, values in in_child(memory_bandwidth, args.threads or default_threads()).items():
        bandwidth[kind] += values
    summary = report(results, bandwidth, args)
    if args.json:
        args.json.write_text(json.dumps({**summary, "samples": {w: r["samples"] for w, r in results.items()}}, indent=1))
    print(f"load average at the end {os.getloadavg()} (other processes share these cores: timings are noisy)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
