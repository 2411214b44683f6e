"""The scoring engine: probabilities of answer options after a prompt.

For each option the engine sums the probability of every token spelling of it
(as the template spells them: "A", " A", ...), then normalises over the
options only: q(o) = P(o) / sum_o' P(o'). The options' share of the whole
vocabulary, `mass`, is reported: a low mass means the template or model is off.

Multi-token spellings ("10" = "1" "0") are scored exactly: the spellings form
a trie, and one sequence (prompt + the longest shared path) yields every
log-prob needed. A spelling that is a strict prefix of another option's
spelling ("1" of "10") gets only its exclusive share: P("1") - P("10").
Raw results are cached by the back end's wrapper (rlaif.backends.cached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlaif.backends import Backend, TokenRequest
from rlaif.errors import RlaifError


@dataclass
class OptionResult:
    probs: dict[str, float]  # normalised over the options
    mass: float  # the options' total probability under the model
    logprobs: dict[str, float]  # log P(option), unnormalised


class SpellingTable:
    """Token ids of every spelling of every option, checked against the tokenizer."""

    def __init__(self, tokenizer, spellings: dict[str, list[str]], model_id: str = "model"):
        self.spellings = spellings
        self.ids: dict[str, tuple[int, ...]] = {}
        self.owner: dict[str, str] = {}
        for option, texts in spellings.items():
            for text in texts:
                ids = spell(tokenizer, text, model_id)
                if any(self.ids[t] == ids and self.owner[t] == option for t in self.ids):
                    continue  # another spelling of this option is the same tokens: count it once
                self.ids[text] = ids
                self.owner[text] = option
        by_ids: dict[tuple[int, ...], str] = {}
        for text, ids in self.ids.items():
            if ids in by_ids and self.owner[by_ids[ids]] != self.owner[text]:
                raise RlaifError(f"The tokenizer of {model_id} spells options {self.owner[by_ids[ids]]!r} and "
                                 f"{self.owner[text]!r} with the same tokens; use other option spellings.")
            by_ids[ids] = text

    def requests(self, prompt_ids: list[int]) -> tuple[list[TokenRequest], dict[str, list[tuple[int, int]]]]:
        """Sequences to run for one prompt, and where each spelling's log-probs are read (request, read index)."""
        paths = {ids[:-1] for ids in self.ids.values()}
        extensions = sorted(p for p in paths if not any(q != p and q[:len(p)] == p for q in paths))
        reads: list[list[tuple[int, int]]] = [[] for _ in extensions]
        where: dict[str, list[tuple[int, int]]] = {}
        start = len(prompt_ids) - 1
        for text, ids in self.ids.items():
            k = next(i for i, ext in enumerate(extensions) if ext[:len(ids) - 1] == ids[:-1])
            where[text] = []
            for j, token in enumerate(ids):
                where[text].append((k, len(reads[k])))
                reads[k].append((start + j, token))
        requests = [TokenRequest(tuple(prompt_ids) + ext, tuple(r)) for ext, r in zip(extensions, reads)]
        return requests, where

    def option_logprobs(self, spelling_logprobs: dict[str, float]) -> dict[str, float]:
        """log P(option): sum over its spellings, each counted once and net of longer options' spellings."""
        total: dict[str, float] = {option: 0.0 for option in self.spellings}
        for text, ids in self.ids.items():
            p = math.exp(spelling_logprobs[text])
            for other, other_ids in self.ids.items():
                if len(other_ids) > len(ids) and other_ids[:len(ids)] == ids:
                    if self.owner[other] == self.owner[text]:
                        continue  # the same option's longer spelling is already inside p
                    p -= math.exp(spelling_logprobs[other])
            if any(len(ids) > len(o) and ids[:len(o)] == o and self.owner[t] == self.owner[text]
                   for t, o in self.ids.items()):
                continue  # counted through its shorter spelling of the same option
            total[self.owner[text]] += max(p, 0.0)
        return {option: math.log(p) if p > 0 else -math.inf for option, p in total.items()}


def spell(tokenizer, text: str, model_id: str = "model") -> tuple[int, ...]:
    """Token ids of `text` as it would follow other text (no BOS, no dummy-prefix space)."""
    marker = tokenizer.encode("\n", add_special_tokens=False)
    full = tokenizer.encode("\n" + text, add_special_tokens=False)
    ids = full[len(marker):] if full[:len(marker)] == marker else tokenizer.encode(text, add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids) or tokenizer.decode(list(ids)) .strip() != text.strip():
        raise RlaifError(f"The tokenizer of {model_id} cannot spell the option {text!r}; use a model whose "
                         "tokenizer has these characters, or a template with other option spellings.")
    return tuple(ids)


class ScoringEngine:
    """Score option sets after prompts through a back end (wrap it in backends.cached.CachedBackend to cache)."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._tables: dict[str, SpellingTable] = {}
        self.forward_tokens = 0

    def table(self, spellings: dict[str, list[str]]) -> SpellingTable:
        key = repr(sorted(spellings.items()))
        if key not in self._tables:
            self._tables[key] = SpellingTable(self.backend.tokenizer, spellings, self.backend.model_id)
        return self._tables[key]

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids as the model reads them (with the tokenizer's BOS)."""
        return self.backend.tokenizer.encode(prompt, add_special_tokens=True)

    def score(self, prompts: list[str], spellings: dict[str, list[str]],
              encoded: list[list[int]] | None = None) -> list[OptionResult]:
        """Option probabilities after each prompt (`encoded`: its token ids, when the caller has them)."""
        table = self.table(spellings)
        all_requests: list[TokenRequest] = []
        plans = []
        for i, prompt in enumerate(prompts):
            requests, where = table.requests(encoded[i] if encoded is not None else self.encode(prompt))
            plans.append((len(all_requests), where))
            all_requests.extend(requests)
        self.forward_tokens += sum(len(r.ids) for r in all_requests)
        values = self.backend.token_logprobs(all_requests) if all_requests else []
        raw = [{text: sum(values[offset + k][j] for k, j in spots) for text, spots in where.items()}
               for offset, where in plans]
        return [_result(table, r) for r in raw]


def _result(table: SpellingTable, spelling_logprobs: dict[str, float]) -> OptionResult:
    logprobs = table.option_logprobs(spelling_logprobs)
    top = max(logprobs.values())
    if top == -math.inf:
        raise RlaifError("The model gave every option zero probability; check the template's option spellings.")
    weights = {o: math.exp(lp - top) for o, lp in logprobs.items()}
    norm = sum(weights.values())
    mass = sum(math.exp(lp) for lp in logprobs.values())
    return OptionResult(probs={o: w / norm for o, w in weights.items()}, mass=mass, logprobs=logprobs)
