"""Each way of a benchmark in its own spawned process, so its peak RSS, threads and warm-up are its own.

`run_way(way, args, queue)` (defined in the benchmark) puts one dict on the queue with at
least `seconds`, `threads`, `load_before` and `load_after`.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from queue import Empty
from typing import Any

CONTEXT = mp.get_context("spawn")


def run_ways(ways: Sequence[str], run_way: Callable[..., None], args: Any) -> dict[str, dict]:
    """The figures of every way, run one after another; a line per way as it ends."""
    results: dict[str, dict] = {}
    for way in ways:
        queue = CONTEXT.Queue()
        child = CONTEXT.Process(target=run_way, args=(way, args, queue))
        child.start()
        while way not in results:
            try:
                results[way] = queue.get(timeout=5)
            except Empty:
                if not child.is_alive():
                    raise SystemExit(f"The {way} run failed (exit code {child.exitcode}); see its error above.") from None
        child.join()
        r = results[way]
        print(f"  {way}: {r['seconds']:.1f} s, {r['threads']} threads, load average {r['load_before']:.2f} -> "
              f"{r['load_after']:.2f}", flush=True)
    return results


def in_child(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh process (its memory stays out of the ways' peak RSS)."""
    with CONTEXT.Pool(1) as pool:
        return pool.apply(function, args)
