"""Labelling through an inference server: rlaif's server back end vs the client people write today.

On one local llama-server (the embedded Gemma 3 270M Q4_K_M GGUF), the same
hh-rlhf harmless pairs (response_a = chosen, response_b = rejected; data and
provenance in /work/shared/data/human_prefs), the same k principles per pair
and both orders, two ways:

  naive  one request per prompt, one after another, the prompt as text to
         /v1/completions with `logprobs: 20` and `max_tokens: 1`, the options
         found by token string in the top 20 (as alpaca_eval's logprob
         annotators parse `top_logprobs`): q = P(A) / (P(A) + P(B)); a prompt
         where an option is not in the top 20 cannot be scored exactly;
  rlaif  rlaif.label.Labeller with LabelConfig(model=URL): prompts as token ids,
         one request per distinct prefix, requests that share a prefix one after
         another on a warm slot, several conversations in flight, exact log-probs
         for any option (the top k widened when needed).

The server is restarted before each run of a way, so neither finds the other's
prompts cached; with --repeats N the ways alternate (naive first, then rlaif
first, ...) and the medians are compared, as a shared machine's speed drifts. It
prints labels/s of each and the ratio (goal >= 1.5x), max |q_rlaif - q_naive|
over the prompts the naive client could score, and how many prompts it could
not. A JSON line ends the output. Run it alone (flock /tmp/rlaif-heavy.lock):

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

        times: dict[str, list[float]] = {"naive": [], "rlaif": []}
        tokens_computed: dict[str, int] = {}
        for repeat in range(args.repeats):
            for way in ("naive", "rlaif") if repeat % 2 == 0 else ("rlaif", "naive"):
                server.fresh()
                if way == "naive":
                    seconds, naive, computed = run_naive(server.url, jobs, options)
                else:
                    labeller = Labeller(config)  # connects and probes the restarted server (not timed)
                    backend = labeller.backend.backend
                    before = backend.dialect.computed_tokens
                    seconds, labels = run_rlaif(labeller, pairs)
                    computed = backend.dialect.computed_tokens - before
                times[way].append(seconds)
                tokens_computed[way] = computed
                print(f"{way}: {seconds:.1f}s, {len(pairs) / seconds:.3f} labels/s, {computed} prompt tokens "
                      "computed (the rest came from the server's prompt cache)", flush=True)
    finally:
        server.stop()
    naive_s, rlaif_s = statistics.median(times["naive"]), statistics.median(times["rlaif"])

    ours = [labels[i].by_principle_orders[pid][int(swapped)] for i, pid, swapped, _ in jobs]
    scored = [(a, b) for a, b in zip(ours, naive) if b is not None]
    unscored = len(jobs) - len(scored)
    max_dq = max((abs(a - b) for a, b in scored), default=float("nan"))
    ratio = naive_s / rlaif_s
    result = {"pairs": len(pairs), "k": args.k, "template": args.template, "prompts": len(jobs),
              "prompt_tokens": tokens, "naive_tokens_computed": tokens_computed.get("naive"),
              "rlaif_tokens_computed": tokens_computed.get("rlaif"), "naive_s": round(naive_s, 2), "rlaif_s": round(rlaif_s, 2),
              "naive_labels_per_s": round(len(pairs) / naive_s, 4), "rlaif_labels_per_s": round(len(pairs) / rlaif_s, 4),
              "speedup": round(ratio, 2), "goal": GOAL, "repeats": args.repeats,
              "naive_runs_s": [round(t, 2) for t in times["naive"]], "rlaif_runs_s": [round(t, 2) for t in times["rlaif"]], "max_abs_dq_scored": round(max_dq, 6),
              "naive_unscored_prompts": unscored, "concurrency": backend.pool.endpoints[0].concurrency, "slots": args.slots,
              "threads": args.threads, "scoring": backend.scoring}
    print(f"median of {args.repeats}: naive {naive_s:.1f}s, rlaif {rlaif_s:.1f}s; "
          f"speed-up {ratio:.2f}x (goal {GOAL}x); max |dq| {max_dq:.2e} on the {len(scored)} prompts the naive "
          f"client scored; {unscored} of {len(jobs)} prompts it could not score (an option outside its top 20).")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
