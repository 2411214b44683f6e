"""Shared fixtures: an isolated cache, tiny local models and a fake back end with known log-probs.

Nothing here downloads: the tokenizers are built from a word list, the models
are random tiny Llamas saved to a temporary directory and loaded back through
the same code path users use (`--model DIR`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub are imported by any test module

# The words of the CAI templates, of the test pairs and constitutions; anything else becomes <unk>.
WORDS = (
    "A B ( ) : , . ? ' Consider the following conversation between a human and an assistant Options The answer is "
    "Let s think step by Therefore Human Assistant hello bye yes no good bad ok what two plus four Choose kind "
    "honest response more which because 0 1 2 3 4 5 6 7 8 9 ##0 Rating"
).split()


def make_tokenizer(words: list[str] = WORDS):
    """A word-level tokenizer (WordPiece model, whole words only, plus "##0" so "10" is spelt "1" "0")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def save_tiny_llama(path: Path, tokenizer, seed: int = 0) -> Path:
    """A random 2-layer Llama with widely spread logits (large init), saved with its tokenizer."""
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         initializer_range=0.5, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Never touch ~/.cache or a hub: the raw-result cache and model conversions go to a temporary dir."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "RLAIF_CACHE_DIR", "RLAIF_THREADS")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RLAIF_CACHE_DIR"] = str(tmp_path_factory.mktemp("rlaif-cache"))
    # Tiny models run fastest on one thread; two threads on two shared cores can be 10-25x slower.
    os.environ.setdefault("RLAIF_THREADS", "1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """The tiny tokenizer saved alone: the model root the fake servers report."""
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer))


@pytest.fixture(scope="session")
def save_model(tiny_tokenizer):
    """save_model(path, seed=0): a tiny Llama on the shared tokenizer, saved to `path` (e.g. to retrain in place)."""
    return lambda path, seed=0: save_tiny_llama(Path(path), tiny_tokenizer, seed)


@pytest.fixture(scope="session")
def no_ab_model_dir(tmp_path_factory) -> str:
    """A tiny model whose tokenizer has no "A" and no "B" token: it cannot spell the CAI options."""
    tokenizer = make_tokenizer([w for w in WORDS if w not in ("A", "B")])
    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny-no-ab"), tokenizer))


Condition = str | tuple[str, ...] | Callable[[str], bool]


class FakeBackend:
    """The `Backend` protocol with known answers, on a real tokenizer.

    `rules` is a list of (when, probs). For each read the context is the
    sequence up to the read position, as tokens joined by spaces ("( A ) good").
    The first rule whose `when` matches gives the probabilities: `when` is a
    text (its tokens occur contiguously in the context), a tuple of texts (all
    occur) or a predicate on the context. `probs` maps a token ("A", "##0") to
    its probability; the rest of the mass is spread evenly over the other
    tokens. No rule matching means a uniform distribution.
    """

    def __init__(self, tokenizer, rules: list[tuple[Condition, dict[str, float]]],
                 rationale: Callable[[str], str] | str = "", model_id: str = "fake-model"):
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.context_length: int | None = None
        self.rules = rules
        self.rationale = rationale
        self.calls = 0  # token_logprobs calls
        self.generate_calls = 0
        self.contexts: list[str] = []  # every scored prompt (the request's ids up to its first read)
        self.generated_for: list[str] = []

    def _tokens(self, text: str) -> str:
        return " ".join(self.tokenizer.tokenize(text))

    def _matches(self, when: Condition, context: str) -> bool:
        if callable(when):
            return when(context)
        texts = (when,) if isinstance(when, str) else when
        return all(f" {self._tokens(t)} " in f" {context} " for t in texts)

    def logprob(self, ids: tuple[int, ...], token: int) -> float:
        context = " ".join(self.tokenizer.convert_ids_to_tokens(list(ids)))
        vocab = len(self.tokenizer)
        for when, probs in self.rules:
            if self._matches(when, context):
                named = {self.tokenizer.convert_tokens_to_ids(t): p for t, p in probs.items()}
                rest = (1.0 - sum(named.values())) / (vocab - len(named))
                p = named.get(token, rest)
                return math.log(p) if p > 0 else -math.inf
        return -math.log(vocab)

    def token_logprobs(self, requests) -> list[list[float]]:
        self.calls += 1
        out = []
        for request in requests:
            first = min(pos for pos, _ in request.reads)
            self.contexts.append(" ".join(self.tokenizer.convert_ids_to_tokens(list(request.ids[:first + 1]))))
            out.append([self.logprob(request.ids[:pos + 1], token) for pos, token in request.reads])
        return out

    def generate(self, prompts: list[str], settings: Any) -> list[str]:
        self.generate_calls += 1
        self.generated_for.extend(prompts)
        return [self.rationale(p) if callable(self.rationale) else self.rationale for p in prompts]


@pytest.fixture
def make_fake(tiny_tokenizer):
    """make_fake(rules, rationale="") -> a FakeBackend on the tiny tokenizer."""

    def make(rules, rationale: Callable[[str], str] | str = "", model_id: str = "fake-model") -> FakeBackend:
        return FakeBackend(tiny_tokenizer, rules, rationale, model_id)

    return make
