"""Peak memory and seconds per step of RL on the embedded default model: full fine-tuning vs LoRA.

Trains the embedded policy (Gemma 3 270M, float32, via
rlaif.backends.hf.default.default_model_dir()) for a few steps on
examples/prompts_ppo.jsonl, each way in its own subprocess so peak RSS does not mix:

  grpo-full   GRPO, every weight trained; beta > 0, so TRL loads a reference copy
  grpo-lora   GRPO, LoRA on all linear layers; the reference is the base with adapters disabled
  ppo-full    PPO (only where the ppo extra's TRL 1.12 is installed): policy, reference copy,
              value model, all trained in float32
  ppo-lora    PPO with LoRA on policy and value model, no reference copy

The reward is a cheap text function (words of the completion), so the figures are the
trainer's own: a reward model or d-RLAIF adds its own model on top. Peak RSS is the
worker's ru_maxrss (model loading included); seconds per step are from the run's log,
mean over the steps after the first (the first includes warm-up), with the first step
shown apart. A JSON line ends the output.

    flock /tmp/rlaif-heavy.lock python benchmarks/rl_memory.py --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "examples" / "prompts_ppo.jsonl"
GOAL_LORA_GB = 6.0
DEFAULT_MICRO = "rlaif's default"
REWARD = "rl_memory:words_reward"  # imported by name, as `--reward-fn` would (benchmarks/ is on the path)


def words_reward(prompts, completions, **kwargs):
    """0.1 per word of the completion, capped at 3: cheap, and something a policy can learn."""
    return [min(3.0, 0.1 * len(str(c).split())) for c in completions]


def ppo_available() -> bool:
    from rlaif.errors import RlaifError  # noqa: PLC0415
    from rlaif.rl.ppo import check_ppo_trl  # noqa: PLC0415

    try:
        check_ppo_trl()
    except RlaifError:
        return False
    return True


def run_worker(way: str, args: argparse.Namespace, out: Path) -> dict:
    """Train one way in this process; returns its figures."""
    from rlaif.backends.hf.default import default_model_dir  # noqa: PLC0415

    policy = str(default_model_dir())
    algorithm, tuning = way.split("-")
    lora = {"lora_r": args.lora_r, "lora_alpha": 2.0 * args.lora_r} if tuning == "lora" else {}
    started = time.time()
    if algorithm == "grpo":
        from rlaif.rl.grpo import GRPORunConfig, run_grpo  # noqa: PLC0415

        config = GRPORunConfig(prompts=str(PROMPTS), policy=policy, output_dir=str(out), reward_fn=REWARD,
                               steps=args.steps, prompts_per_step=args.prompts_per_step,
                               num_generations=args.num_generations, completion_length=args.length,
                               learning_rate=1e-5, beta=0.04, save_steps=10_000, **lora)
        result = run_grpo(config)
    else:
        from rlaif.rl.ppo import PPORunConfig, run_ppo  # noqa: PLC0415

        config = PPORunConfig(prompts=str(PROMPTS), policy=policy, output_dir=str(out), reward_fn=REWARD,
                              steps=args.steps, batch_size=args.prompts_per_step * args.num_generations,
                              response_length=args.length, ppo_epochs=args.ppo_epochs, save_steps=10_000,
                              micro_batch_size=args.micro_batch_size, **lora)
        result = run_ppo(config)
    rows = [json.loads(line) for line in Path(result["log"]).read_text().splitlines()]
    seconds = [row["seconds"] for row in rows]
    later = [b - a for a, b in zip(seconds, seconds[1:])]
    return {
        "way": way, "steps": len(rows), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "s_per_step": sum(later) / len(later) if later else None, "first_step_s": seconds[0] if seconds else None,
        "wall_s": time.time() - started, "reference": result.get("reference"),
        "reward_first": result.get("reward_first"), "reward_last": result.get("reward_last"),
    }


def run_in_subprocess(way: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"rl-memory-{way}-") as tmp:
        command = [sys.executable, __file__, "--worker", way, "--out", str(Path(tmp) / "run"),
                   "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
                   "--num-generations", str(args.num_generations), "--length", str(args.length),
                   "--lora-r", str(args.lora_r), "--ppo-epochs", str(args.ppo_epochs)]
        if args.micro_batch_size:
            command += ["--micro-batch-size", str(args.micro_batch_size)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            return {"way": way, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        return json.loads(lines[-1][len("RESULT "):])


def print_table(results: list[dict], ppo_note: str | None) -> None:
    print(f"\n{'way':<10} {'steps':>5} {'peak RSS':>9} {'s/step':>8} {'1st step':>9} {'wall':>7}  reference")
    for r in results:
        if "error" in r:
            print(f"{r['way']:<10} failed: {r['error']}")
            continue
        per_step = f"{r['s_per_step']:.1f}" if r["s_per_step"] is not None else "-"
        print(f"{r['way']:<10} {r['steps']:>5} {r['peak_rss_gb']:>7.2f} GB {per_step:>8} {r['first_step_s']:>8.1f}s "
              f"{r['wall_s']:>6.0f}s  {r['reference']}")
    by_way = {r["way"]: r for r in results if "error" not in r}
    for algorithm in ("grpo", "ppo"):
        full, lora = by_way.get(f"{algorithm}-full"), by_way.get(f"{algorithm}-lora")
        if full and lora:
            verdict = "met" if lora["peak_rss_gb"] < GOAL_LORA_GB else "NOT met"
            print(f"{algorithm}: LoRA peak {lora['peak_rss_gb']:.2f} GB vs full {full['peak_rss_gb']:.2f} GB "
                  f"({full['peak_rss_gb'] / lora['peak_rss_gb']:.2f}x less); goal < {GOAL_LORA_GB:.0f} GB: {verdict}")
    if ppo_note:
        print(ppo_note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--length", type=int, default=32, help="completion / response tokens")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=None, help="PPO: prompts per forward/backward pass (default: rlaif's, 2 for an even batch; the batch size for the whole batch)")
    parser.add_argument("--ways", default="grpo-full,grpo-lora,ppo-full,ppo-lora")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, args, Path(args.out))), flush=True)
        return
    ways = [w for w in args.ways.split(",") if w]
    note = None
    if any(w.startswith("ppo") for w in ways) and not ppo_available():
        ways = [w for w in ways if not w.startswith("ppo")]
        note = ("ppo: not measured: this environment's TRL has no PPOTrainer (TRL >= 1.13); run this benchmark "
                "again in a venv with the ppo extra (pip install -e '.[dev,ppo]') to measure PPO.")
    print(f"{args.steps} steps, {args.prompts_per_step} prompts x {args.num_generations} completions of "
          f"<= {args.length} tokens per step (PPO: a batch of {args.prompts_per_step * args.num_generations} prompts, "
          f"{args.ppo_epochs} epochs, micro-batch {args.micro_batch_size or DEFAULT_MICRO}), LoRA r={args.lora_r}")
    results = []
    for way in ways:
        results.append(run_in_subprocess(way, args))
        print(json.dumps(results[-1]), flush=True)
    print_table(results, note)
    print(json.dumps({"results": results, "ppo_note": note}))


if __name__ == "__main__":
    main()
