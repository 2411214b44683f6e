"""Prompts that do not fit the model: found before any model work, skipped with a reason or refused.

The limit on a record's prompt is the model's context length (the back end's
`context_length`) less what the model must still read or write after it (the
answer's spelling, a rationale, `--max-new-tokens`), and at most
`--max-prompt-tokens`. Each record is measured in two steps, so memory stays
bounded whatever the input holds:

1. characters: no token spells more than `chars_per_token` non-blank
   characters (the longest entry of the vocabulary), so a text field with more
   than `limit x chars_per_token` of them is too long without rendering or
   tokenising it; so is a record whose texts add up to more than
   `MAX_RECORD_CHARS`, whatever the limit;
2. tokens: otherwise its prompts are rendered and tokenised, and the longest counts.

`--on-too-long skip` (the default) writes a skip row for such a record
(`{"id": ..., "skipped": "too long: N tokens > limit M"}`; readers leave those
out with a count); `--on-too-long error` stops before any model work with one
line naming the first such record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rlaif.errors import RlaifError

ON_TOO_LONG = ("skip", "error")
MAX_RECORD_CHARS = 2_000_000  # a record's texts together: half the longest prompt a template may render
FALLBACK_CHARS_PER_TOKEN = 256  # a tokenizer whose vocabulary cannot be read (a server's): a loose bound


def check_length_options(max_prompt_tokens: int | None, on_too_long: str) -> None:
    """Validate the two length settings of a stage's config."""
    if on_too_long not in ON_TOO_LONG:
        raise RlaifError(f"--on-too-long must be skip or error, not {on_too_long!r}.")
    if max_prompt_tokens is not None and (isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int)
                                          or max_prompt_tokens < 1):
        raise RlaifError(f"--max-prompt-tokens must be a whole number of at least 1, not {max_prompt_tokens!r}.")


def chars_per_token(tokenizer: Any) -> int:
    """The most characters one token can spell: the longest vocabulary entry (a loose bound without one)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError, TypeError):
        return FALLBACK_CHARS_PER_TOKEN
    return max((len(token) for token in vocab), default=FALLBACK_CHARS_PER_TOKEN) or 1


def non_blank(text: str) -> int:
    """Characters other than blanks (some tokenizers drop whitespace, so only these bound the tokens)."""
    return len(text) - sum(text.count(c) for c in " \t\n\r")


class LengthLimit:
    """The longest prompt a model takes, and which records exceed it.

    `reserve`: tokens the model must still take after the prompt (new tokens, the answer's spelling).
    """

    def __init__(self, tokenizer: Any, context_length: int | None, max_prompt_tokens: int | None = None,
                 reserve: int = 0, on_too_long: str = "skip"):
        check_length_options(max_prompt_tokens, on_too_long)
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.on_too_long = on_too_long
        limits = [n for n in (context_length - reserve if context_length else None, max_prompt_tokens) if n]
        self.limit: int | None = min(limits) if limits else None
        if self.limit is not None and self.limit < 1:
            raise RlaifError(f"The model takes {context_length} tokens, and {reserve} are needed after the prompt "
                             "(new tokens, the answer): nothing fits. Lower --max-new-tokens, or use a model with a "
                             "longer context.")
        self.chars_per_token = chars_per_token(tokenizer) if self.limit is not None else 1

    @classmethod
    def for_backend(cls, backend: Any, max_prompt_tokens: int | None, on_too_long: str, reserve: int = 0) -> LengthLimit:
        return cls(backend.tokenizer, getattr(backend, "context_length", None), max_prompt_tokens, reserve, on_too_long)

    def too_long(self, texts: Sequence[str], render: Callable[[], list[str]]) -> str | None:
        """Why a record cannot run (None: it fits): its raw `texts` are checked first, then its rendered prompts."""
        total = sum(len(text) for text in texts)
        if total > MAX_RECORD_CHARS:
            return f"too long: {total} characters > rlaif's limit of {MAX_RECORD_CHARS} for one record"
        if self.limit is None:
            return None
        longest = max((non_blank(text) for text in texts), default=0)
        if longest > self.limit * self.chars_per_token:
            return f"too long: over {longest // self.chars_per_token} tokens > limit {self.limit}"
        tokens = max((len(self.tokenizer.encode(prompt)) for prompt in render()), default=0)
        return f"too long: {tokens} tokens > limit {self.limit}" if tokens > self.limit else None

    def scan(self, records: Iterable[dict[str, Any]], key: str, fields: Sequence[str],
             render: Callable[[dict[str, Any]], list[str]], what: str = "record") -> dict[str, str]:
        """key -> reason for each record that does not fit; with on_too_long="error", a one-line error instead."""
        found: dict[str, str] = {}
        for record in records:
            reason = self.too_long([str(record[f]) for f in fields], lambda record=record: render(record))
            if reason:
                found[str(record[key])] = reason
        if found and self.on_too_long == "error":
            first, reason = next(iter(found.items()))
            context = f" (the model takes {self.context_length})" if self.context_length else ""
            raise RlaifError(f"{len(found)} {what}(s) are too long for the model, e.g. {what} {first!r}: {reason}. "
                             f"Shorten them, raise --max-prompt-tokens{context}, or pass --on-too-long skip to "
                             "skip them.")
        return found
