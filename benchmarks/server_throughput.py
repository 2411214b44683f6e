"""Labelling through an inference server: rlaif's server back end vs the client people write today.

On one local llama-server (the embedded Gemma 3 270M Q4_K_M GGUF), the same
hh-rlhf harmless pairs (response_a = chosen, response_b = rejected; data and
provenance in /work/shared/data/human_prefs), the same k principles per pair
and both orders, two ways:

  naive  one request per prompt, one after another, the prompt as text to
         /v1/completions with `logprobs: 20` and `max_tokens: 1`, the options
         found by token string in the top 20 (as alpaca_eval's logprob
         annotators parse `top_logprobs`): q = P(A) / (P(A) + P(B)); a prompt
         where an option is not in the top 20 cannot be scored exactly. The
         prompts go in the grouped order (pair, principle, order): the best
         case for it, as llama-server's default prompt cache then reuses each
         prompt's shared prefix with the one before;
  naive-2pass  the same client with the position swap as a second pass over
         the data (every pair in the A/B order, then every pair swapped), as a
         single-order annotator is usually extended to average both orders;
  rlaif  rlaif.label.Labeller with LabelConfig(model=URL): prompts as token ids,
         one request per distinct prefix, requests that share a prefix one after
         another on a warm slot, several conversations in flight, exact log-probs
         for any option (the top k widened when needed), whatever the input order.

The server is restarted before each run of a way, so none finds another's
prompts cached; with --repeats N the order of the ways rotates and the medians
are compared, as a shared machine's speed drifts. It prints labels/s of each,
the ratios (goal >= 1.5x), the prompt tokens the server computed (the rest came
from its prompt cache), max |q_rlaif - q_naive| over the prompts the naive
client could score, and how many prompts it could not. A JSON line ends the output. Run it alone (flock /tmp/rlaif-heavy.lock):

    PYTHONPATH=. python benchmarks/server_throughput.py --pairs 16 --k 4
    PYTHONPATH=. python benchmarks/server_throughput.py --url http://127.0.0.1:8080/v1   # a server you run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "human_prefs" / "hh_rlhf_harmless_base.dev.jsonl"
sys.path.insert(0, str(ROOT / "tests"))
GOAL = 1.5


def load_pairs(path: Path, n: int) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [{"id": r["id"], "prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]}
            for r in rows]


class Server:
    """The llama-server under test: started here (restartable) or one at --url."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.process = args, work, None
        self.url = args.url
        if not args.url:
            from llama_server import LlamaServer, default_gguf, llama_server_binary  # noqa: PLC0415

            binary = llama_server_binary()
            if binary is None:
                raise SystemExit("No llama-server: run scripts/build-llama-server.sh or set RLAIF_LLAMA_SERVER.")
            self.process = LlamaServer(binary, default_gguf(work), work / "server.log", ctx=args.ctx,
                                       threads=args.threads, slots=args.slots)
            self.url = self.process.url

    def fresh(self) -> None:
        """An empty prompt cache: a restart, or (a server we did not start) every slot erased."""
        if self.process:
            self.process.stop()
            self.process.start()
            return
        root = self.url.rstrip("/").removesuffix("/v1")
        slots = requests.get(f"{root}/slots", timeout=30).json()
        for slot in slots:
            requests.post(f"{root}/slots/{slot['id']}?action=erase", timeout=30)

    def stop(self) -> None:
        if self.process:
            self.process.stop()


def prompts_of(labeller, pairs) -> list[tuple[int, str, bool, str]]:
    """(pair index, principle id, swapped, prompt) in the Labeller's order, with its principle choice."""
    from rlaif.constitution import choose_principles  # noqa: PLC0415

    config, out = labeller.config, []
    for index, pair in enumerate(pairs):
        for principle in choose_principles(labeller.constitution, config.principles, pair["id"], config.seed,
                                           config.k, list(config.only)):
            for swapped in (False, True):
                out.append((index, principle.id, swapped, labeller._render(pair, principle, swapped)))
    return out


def naive_q(session: requests.Session, url: str, prompt: str, options: tuple[str, str], swapped: bool,
            computed: list[int]) -> float | None:
    """The slot-of-A probability from the top-20 by token string; None when an option is not in the top 20."""
    body = {"prompt": prompt, "max_tokens": 1, "logprobs": 20, "temperature": 0}
    answer = session.post(f"{url}/completions", json=body, timeout=600).json()
    computed.append(int((answer.get("timings") or {}).get("prompt_n", 0)))
    top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    found = {t["token"]: t["logprob"] for t in top if t["token"] in options}
    if len(found) < len(options):
        return None
    a, b = (found[o] for o in options)
    q_first = 1.0 / (1.0 + math.exp(b - a))
    return 1.0 - q_first if swapped else q_first


def run_naive(url: str, jobs, options) -> tuple[float, list[float | None], int]:
    session, computed = requests.Session(), []
    started = time.perf_counter()
    values = [naive_q(session, url, prompt, options, swapped, computed) for _, _, swapped, prompt in jobs]
    return time.perf_counter() - started, values, sum(computed)


def run_rlaif(labeller, pairs) -> tuple[float, list]:
    started = time.perf_counter()
    labels = labeller.label(pairs)
    return time.perf_counter() - started, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="principles per pair (both orders each)")
    parser.add_argument("--template", default="cai-choice")
    parser.add_argument("--url", default=None, help="use this running llama-server instead of starting one")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="rlaif's requests in flight (default: the back end's, llama-server's slot count)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way, alternating; medians compared")
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()

    from rlaif.label import LabelConfig, Labeller  # noqa: PLC0415

    pairs = load_pairs(DATA, args.pairs)
    work = Path(tempfile.mkdtemp(prefix="server-bench-"))
    server = Server(args, work)
    try:
        if server.process:
            server.process.start()
        config = LabelConfig(model=server.url, principles="k", k=args.k, template=args.template, no_cache=True,
                             backend_options={"concurrency": str(args.concurrency)} if args.concurrency else {})
        labeller = Labeller(config)
        backend = labeller.backend.backend
        jobs = prompts_of(labeller, pairs)
        options = tuple(labeller.template.options)
        tokens = sum(len(backend.tokenizer.encode(p)) for *_, p in jobs)
        print(f"{len(pairs)} pairs x {args.k} principles x 2 orders = {len(jobs)} prompts, {tokens} prompt tokens; "
              f"server {server.url} ({backend.model_id}; {backend.scoring})", flush=True)

        ways = ("naive", "naive-2pass", "rlaif")
        two_pass = sorted(range(len(jobs)), key=lambda j: (jobs[j][2], j))  # unswapped first, then swapped
        times: dict[str, list[float]] = {way: [] for way in ways}
        tokens_computed: dict[str, int] = {}
        naive: list[float | None] = []
        for repeat in range(args.repeats):
            for way in ways[repeat % 3:] + ways[:repeat % 3]:
                server.fresh()
                if way == "naive":
                    seconds, naive, computed = run_naive(server.url, jobs, options)
                elif way == "naive-2pass":
                    seconds, values, computed = run_naive(server.url, [jobs[j] for j in two_pass], options)
                    in_order = [None] * len(jobs)
                    for j, value in zip(two_pass, values):
                        in_order[j] = value
                    naive_2pass = in_order
                else:
                    labeller = Labeller(config)  # connects and probes the restarted server (not timed)
                    backend = labeller.backend.backend
                    before = backend.dialect.computed_tokens
                    seconds, labels = run_rlaif(labeller, pairs)
                    computed = backend.dialect.computed_tokens - before
                times[way].append(seconds)
                tokens_computed[way] = computed
                print(f"{way}: {seconds:.1f}s, {len(pairs) / seconds:.3f} labels/s, {computed} prompt tokens "
                      "computed", flush=True)
    finally:
        server.stop()
    median = {way: statistics.median(t) for way, t in times.items()}

    ours = [labels[i].by_principle_orders[pid][int(swapped)] for i, pid, swapped, _ in jobs]
    scored = [(a, b) for a, b in zip(ours, naive) if b is not None]
    unscored = len(jobs) - len(scored)
    max_dq = max((abs(a - b) for a, b in scored), default=float("nan"))
    max_dq_2pass = max((abs(a - b) for a, b in zip(naive, naive_2pass) if a is not None and b is not None),
                       default=float("nan"))
    ratios = {way: median[way] / median["rlaif"] for way in ("naive", "naive-2pass")}
    result = {"pairs": len(pairs), "k": args.k, "template": args.template, "prompts": len(jobs),
              "prompt_tokens": tokens, "tokens_computed": tokens_computed, "repeats": args.repeats,
              "runs_s": {way: [round(t, 2) for t in ts] for way, ts in times.items()},
              "median_s": {way: round(t, 2) for way, t in median.items()},
              "labels_per_s": {way: round(len(pairs) / t, 4) for way, t in median.items()},
              "speedup_vs_naive": round(ratios["naive"], 2), "speedup_vs_naive_2pass": round(ratios["naive-2pass"], 2),
              "goal": GOAL, "max_abs_dq_scored": round(max_dq, 6), "max_abs_dq_naive_orders": round(max_dq_2pass, 6),
              "naive_unscored_prompts": unscored, "concurrency": backend.pool.endpoints[0].concurrency,
              "slots": args.slots, "threads": args.threads, "scoring": backend.scoring}
    print(f"median of {args.repeats}: " + ", ".join(f"{way} {t:.1f}s" for way, t in median.items())
          + f"; rlaif's speed-up {ratios['naive']:.2f}x over naive, {ratios['naive-2pass']:.2f}x over naive-2pass "
          f"(goal {GOAL}x); max |dq| {max_dq:.2e} on the {len(scored)} prompts the naive client scored "
          f"(the naive client against itself in its two orders: {max_dq_2pass:.2e}); {unscored} of {len(jobs)} "
          "prompts it could not score (an option outside its top 20).")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
