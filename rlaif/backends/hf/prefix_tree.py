"""The prefix tree of a batch of token sequences, and length-bucketed batch cuts.

Prompts for one pair share the conversation, and those for one principle share
conversation + principle: each shared span becomes a node computed once, whose
keys and values its children reuse. Pure bookkeeping; the forward passes are in hf.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class Node:
    """A span of the prefix tree: tokens seqs[seq][start:end]; a leaf ends its sequence and is read."""

    seq: int
    start: int
    end: int
    parent: Node | None
    leaf: bool
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)  # per layer, [heads, span, dim]

    def ancestors(self) -> list[Node]:
        chain, node = [], self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]


def prefix_tree(seqs: list[tuple[int, ...]], limits: list[int], min_saving: int, min_span: int = 8) -> list[list[Node]]:
    """The nodes of the requests' prefix tree, level by level (a level's parents are all in earlier levels).

    Sequence i may share only its first `limits[i]` tokens (its first read needs
    its own pass). A span common to c sequences becomes a node when computing it
    once saves (c - 1) x span >= `min_saving` tokens and it is at least
    `min_span` long (a level costs forward passes); other spans stay in their
    children. Sorting puts sequences with a common prefix side by side, so a
    run's common prefix is the one of its first and last members.
    """
    levels: list[list[Node]] = []

    def add(node: Node, depth: int) -> Node:
        while len(levels) <= depth:
            levels.append([])
        levels[depth].append(node)
        return node

    stack: list[tuple[list[int], Node | None, int]] = [(sorted(range(len(seqs)), key=seqs.__getitem__), None, 0)]
    while stack:
        members, anchor, depth = stack.pop()
        base = anchor.end if anchor else 0
        if len(members) == 1:
            add(Node(members[0], base, len(seqs[members[0]]), anchor, leaf=True), depth)
            continue
        common = min(_common_length(seqs[members[0]], seqs[members[-1]]), min(limits[i] for i in members))
        if common - base >= max(min_span, 1) and (len(members) - 1) * (common - base) >= min_saving:
            anchor = add(Node(members[0], base, common, anchor, leaf=False), depth)
            base, depth = common, depth + 1
        for i in members:
            if limits[i] <= common:
                add(Node(i, base, len(seqs[i]), anchor, leaf=True), depth)
        deeper = [i for i in members if limits[i] > common]
        for _, group in itertools.groupby(deeper, key=lambda i: seqs[i][common]):
            stack.append((list(group), anchor, depth))
    return levels


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def length_batches(lengths: list[int], budget: int, overhead: int) -> list[tuple[int, int]]:
    """Cut ascending `lengths` into consecutive batches [lo, hi) of rows x longest <= `budget` tokens.

    The cut minimises padded tokens plus `overhead` per batch (dynamic
    programming over the sorted rows), so a batch grows while the padding it
    adds costs less than another forward pass. A row longer than the budget
    runs alone.
    """
    cost = [0.0] + [math.inf] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for hi in range(1, len(lengths) + 1):
        longest = lengths[hi - 1]
        most = max(1, budget // max(longest, 1))
        for lo in range(max(0, hi - most), hi):
            total = cost[lo] + overhead + (hi - lo) * longest
            if total < cost[hi]:
                cost[hi], cut[hi] = total, lo
    batches, hi = [], len(lengths)
    while hi > 0:
        batches.append((cut[hi], hi))
        hi = cut[hi]
    return batches[::-1]
