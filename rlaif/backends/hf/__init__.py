"""The transformers back end: local CPU/GPU inference, the default.

`token_logprobs` has two paths that give the same log-probs (to float rounding):

* plain: requests sorted by length, cut into left-padded batches under a token
  budget (`length_batches`), one forward pass each;
* shared prefix (default): the requests form a prefix tree (`prefix_tree`); a
  span shared by several requests (the conversation of a pair, then the
  conversation + principle of its two orders) is computed once and its
  key/value states are reused for every continuation. Each level of the tree
  runs in right-padded batches whose rows carry their ancestors' key/value
  states, left-padded, as the past: every row's real tokens stay contiguous,
  so sliding-window attention sees exactly the tokens it would in one pass.

Both paths compute logits only at the positions a request reads, so the
vocabulary projection is paid for a handful of positions, not the prompt.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from rlaif.backends import GenerationSettings, TokenRequest, settings_list
from rlaif.backends.hf.default import default_model_dir, default_model_id, is_default
from rlaif.backends.hf.generation import DecodeStats, cut_at_stop, generate_texts, stop_token_ids  # noqa: F401
from rlaif.backends.hf.prefix_tree import Node, length_batches, prefix_tree
from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Reads = dict[tuple[int, int], float]  # (position, token) -> log-prob


def resolve_model(model: str) -> tuple[str, str]:
    """(path or hub id to load, stable model id for caches and metadata)."""
    if is_default(model):
        return str(default_model_dir()), default_model_id()
    path = Path(model).expanduser()
    if path.exists():
        config = path / "config.json"
        if not config.exists():
            raise RlaifError(f"{path} is not a model directory (no config.json): pass a saved Hugging Face model.")
        digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
        # weights, tokenizer and chat template: any change must miss the cache
        kinds = (".safetensors", ".bin", ".json", ".model", ".jinja")
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in kinds)
        stamp = "".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        return str(path), f"{path.resolve().name}@{digest}{hashlib.sha256(stamp.encode()).hexdigest()[:6]}"
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise RlaifError(f"Model directory {model} does not exist: check the path, or pass `default` or a Hugging Face id.")
    return model, model


def hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be asked (HF_HUB_OFFLINE set, or no connection to it within `timeout`
    seconds), or None when it can. Checked once before loading a hub id, so that an offline machine fails at
    once instead of after a minute of download retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host} cannot be reached ({err.strerror or err})"
    return None


class _NoPrefixSharing(Exception):
    """The model's cache cannot carry a shared prefix (e.g. it drops tokens outside a window)."""


@dataclass
class ForwardStats:
    """What the scoring forward passes cost: passes, real tokens computed, rows x width, logit rows."""

    forwards: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    logit_rows: int = 0


class HFBackend:
    """A causal LM from transformers behind the `Backend` protocol."""

    batch_overhead_tokens = 128  # one forward pass's fixed cost, in tokens: where cutting a batch pays off

    def __init__(self, model: Any, tokenizer: Any, model_id: str, batch_tokens: int = 8192,
                 share_prefix: bool = True, min_prefix: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.batch_tokens = batch_tokens
        self.share_prefix = share_prefix and not getattr(model, "_is_stateful", False)
        self.min_prefix = min_prefix  # a shared span is computed once when that saves at least this many tokens
        self.device = next(model.parameters()).device
        self.stats = ForwardStats()
        # transformers >= 5.2x names the key/value cache `cache` (`past_key_values` warns, then goes away)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.decode_stats = DecodeStats()  # what generate cost (rlaif.backends.hf.generation)
        self._row_keep: bool | None = None  # does the model take per-row `logits_to_keep`? (probed once)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, model: str, dtype: str = "float32", device: str | None = None, batch_tokens: int = 8192,
             threads: int | None = None, share_prefix: bool = True) -> HFBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

        set_threads(threads)
        path, model_id = resolve_model(model)
        offline = hub_offline_reason() if model_id == model else None  # a hub id: can the hub be asked at all?
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=bool(offline))
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=bool(offline))
        except (OSError, ValueError) as err:
            if offline:
                raise RlaifError(f"Model {model!r} is not in the local Hugging Face cache and {offline}: download it "
                                 "once where the hub is reachable, or pass `default` or a local model directory.") from err
            first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
            raise RlaifError(f"Cannot load model {model!r}: {first}. Pass `default`, a local model directory "
                             "or a Hugging Face id you can reach.") from err
        device = device or default_device()
        commit = getattr(lm.config, "_commit_hash", None)
        if model_id == model and commit:  # a hub id: pin the snapshot, so an upstream update misses the cache
            model_id = f"{model}@{commit[:12]}"
        if dtype != "float32":  # other numbers: cached results must not mix
            model_id = f"{model_id}:{dtype}"
        return cls(lm.to(device), tokenizer, model_id, batch_tokens, share_prefix=share_prefix)

    @torch.inference_mode()
    def token_logprobs(self, requests: list[TokenRequest]) -> list[list[float]]:
        merged: dict[tuple[int, ...], set[tuple[int, int]]] = {}  # identical sequences run once
        for r in requests:
            merged.setdefault(tuple(r.ids), set()).update(r.reads)
        seqs = [s for s in merged if merged[s]]
        reads = [sorted(merged[s]) for s in seqs]
        if self.share_prefix:
            try:
                values = self._tree_logprobs(seqs, reads)
            except _NoPrefixSharing as why:
                log.warning("Scoring %s without prefix sharing: %s.", self.model_id, why)
                self.share_prefix = False
        if not self.share_prefix:
            values = self._plain_logprobs(seqs, reads)
        by_seq = dict(zip(seqs, values))
        return [[by_seq[tuple(r.ids)][read] for read in r.reads] for r in requests]

    def _plain_logprobs(self, seqs: list[tuple[int, ...]], reads: list[list[tuple[int, int]]]) -> list[Reads]:
        out: list[Reads] = [{} for _ in seqs]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for lo, hi in length_batches([len(seqs[i]) for i in order], self.batch_tokens, self.batch_overhead_tokens):
            batch = order[lo:hi]
            for i, values in zip(batch, self._forward_plain([seqs[i] for i in batch], [reads[i] for i in batch])):
                out[i] = values
        return out

    def _forward_plain(self, seqs: list[tuple[int, ...]], reads: list[list[tuple[int, int]]]) -> list[Reads]:
        """One left-padded batch without a cache; the last `keep` columns get logits."""
        width = max(len(s) for s in seqs)
        keep = max(len(s) - r[0][0] for s, r in zip(seqs, reads))
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=keep, use_cache=False).logits
        self._count(sum(len(s) for s in seqs), len(seqs) * width, len(seqs) * keep)
        logprobs = torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1]).cpu()
        return [{(p, t): logprobs[row * keep + p - (len(seq) - keep), t].item() for p, t in row_reads}
                for row, (seq, row_reads) in enumerate(zip(seqs, reads))]

    def _tree_logprobs(self, seqs: list[tuple[int, ...]], reads: list[list[tuple[int, int]]]) -> list[Reads]:
        """Level by level through the prefix tree; shared spans once, their key/value states reused."""
        if self._row_keep is None:
            self._row_keep = self._probe_row_keep()
        out: list[Reads] = [{} for _ in seqs]
        for level in prefix_tree(seqs, [r[0][0] for r in reads], self.min_prefix):
            level.sort(key=lambda n: (n.end - n.start, n.start))
            for lo, hi in length_batches([n.end - n.start for n in level], self.batch_tokens,
                                         self.batch_overhead_tokens):
                self._forward_nodes(level[lo:hi], seqs, reads, out)
        return out

    def _forward_nodes(self, nodes: list[Node], seqs: list[tuple[int, ...]], reads: list[list[tuple[int, int]]],
                       out: list[Reads]) -> None:
        """One batch of tree nodes: right-padded segments after their ancestors' key/value states."""
        from transformers import DynamicCache  # noqa: PLC0415
        from transformers.cache_utils import DynamicLayer  # noqa: PLC0415

        rows, width, past = len(nodes), max(n.end - n.start for n in nodes), max(n.start for n in nodes)
        ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, past + width), dtype=torch.long)
        for row, node in enumerate(nodes):
            ids[row, :node.end - node.start] = torch.tensor(seqs[node.seq][node.start:node.end])
            mask[row, past - node.start:past + node.end - node.start] = 1
        positions = torch.tensor([n.start for n in nodes])[:, None] + torch.arange(width)
        wanted = [[p - n.start for p, _ in reads[n.seq]] if n.leaf else [] for n in nodes]
        keep, where = _keep_positions(wanted, width, self._row_keep)
        cache = _past_cache(nodes, past) if past else DynamicCache()
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), **{self._cache_kwarg: cache}, use_cache=True,
                            logits_to_keep=keep.to(self.device)).logits
        if any(type(layer) is not DynamicLayer or layer.keys.shape[-2] != past + width for layer in cache.layers):
            raise _NoPrefixSharing("its cache does not keep every token's keys and values")
        self._count(sum(n.end - n.start for n in nodes), rows * width, logits.reshape(-1, logits.shape[-1]).shape[0])
        logprobs = torch.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1]).cpu()
        for row, node in enumerate(nodes):
            if node.leaf:
                out[node.seq] = {(p, t): logprobs[where[row][p - node.start], t].item() for p, t in reads[node.seq]}
            else:
                node.kv = [(layer.keys[row, :, past:past + node.end - node.start].clone(),
                            layer.values[row, :, past:past + node.end - node.start].clone()) for layer in cache.layers]

    def _probe_row_keep(self) -> bool:
        """Whether the model slices hidden states by a per-row boolean `logits_to_keep` (recent transformers)."""
        ids = torch.full((1, 2), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        keep = torch.tensor([[False, True]], device=self.device)
        try:
            logits = self.model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
        except (IndexError, RuntimeError, TypeError, ValueError):
            return False
        return logits.dim() == 2 and logits.shape[0] == 1

    def _count(self, tokens: int, padded: int, logit_rows: int) -> None:
        self.stats.forwards += 1
        self.stats.tokens += tokens
        self.stats.padded_tokens += padded
        self.stats.logit_rows += logit_rows

    @torch.inference_mode()
    def generate(self, prompts: list[str], settings: GenerationSettings | Sequence[GenerationSettings]) -> list[str]:
        """Continuations of `prompts`, one settings each, decoded in batches of up to `batch_tokens`
        (rows x (longest prompt + longest max_new_tokens)); a row leaves its batch as soon as it ends.

        The text of a row never depends on what it was batched with, and is cut before the first of its
        settings' `stop` strings: see rlaif.backends.hf.generation.
        """
        per = settings_list(settings, len(prompts))
        return generate_texts(self.model, self.tokenizer, list(prompts), per, self.batch_tokens, self.decode_stats)


def _keep_positions(wanted: list[list[int]], width: int, per_row: bool) -> tuple[torch.Tensor, list[dict[int, int]]]:
    """`logits_to_keep` for the columns each row reads, and where each (row, column) lands in the flat logits.

    Per row: a boolean mask, logits come back flattened row by row. Otherwise the
    union of the columns for every row (older models slice one column list).
    """
    if per_row:
        keep = torch.zeros((len(wanted), width), dtype=torch.bool)
        where, flat = [], 0
        for row, cols in enumerate(wanted):
            unique = sorted(set(cols))
            keep[row, unique] = True
            where.append({c: flat + k for k, c in enumerate(unique)})
            flat += len(unique)
        return keep, where
    union = sorted({c for cols in wanted for c in cols})
    return torch.tensor(union, dtype=torch.long), [{c: row * len(union) + k for k, c in enumerate(union)}
                                                    for row in range(len(wanted))]


def _past_cache(nodes: list[Node], past: int):
    """A cache of plain (full) layers holding each row's ancestors' key/value states, left-padded to `past`."""
    from transformers import DynamicCache  # noqa: PLC0415

    chains = [n.ancestors() for n in nodes]
    some = next(chain[0] for chain in chains if chain)
    layers = []
    for layer, (k0, v0) in enumerate(some.kv):
        keys = k0.new_zeros((len(nodes), k0.shape[0], past, k0.shape[-1]))
        values = v0.new_zeros((len(nodes), v0.shape[0], past, v0.shape[-1]))
        for row, (node, chain) in enumerate(zip(nodes, chains)):
            offset = past - node.start
            for a in chain:
                keys[row, :, offset + a.start:offset + a.end] = a.kv[layer][0]
                values[row, :, offset + a.start:offset + a.end] = a.kv[layer][1]
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


def default_threads() -> int:
    """Physical cores this process may use: its CPU affinity (one thread per core), capped by a cgroup quota."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    count = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def default_device() -> str:
    """`cuda:LOCAL_RANK` under a launcher (one GPU a process), `cuda` alone, else `cpu`."""
    if not torch.cuda.is_available():
        return "cpu"
    from rlaif.distributed import World  # noqa: PLC0415

    world = World.from_env()
    return f"cuda:{world.local_rank % torch.cuda.device_count()}" if world.size > 1 else "cuda"


def set_threads(threads: int | None) -> None:
    """Intra-op threads: `threads`, else `RLAIF_THREADS`, else `default_threads()` shared out among the
    processes a launcher started on this machine (LOCAL_WORLD_SIZE); one inter-op thread.

    On a machine other processes share, fewer threads than cores can be much
    faster (spinning OpenMP threads wait for a descheduled sibling); set
    RLAIF_THREADS, or OMP_WAIT_POLICY=PASSIVE before Python starts.
    """
    from rlaif.distributed import World  # noqa: PLC0415

    env = os.environ.get("RLAIF_THREADS", "").strip()
    if env and not env.isdigit():
        raise RlaifError(f"RLAIF_THREADS must be a whole number of threads, not {env!r}; unset it to use every core.")
    wanted = threads or int(env or "0") or max(1, default_threads() // World.from_env().local_size)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work has started
        pass
