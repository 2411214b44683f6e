"""The one conversation formatter: how a prompt, a chat, a response is written as text.

The CAI format writes turns as "Human: ..." and "Assistant: ...", separated by
a blank line. Every stage (label, align, score, generate, revise) shows the
feedback model and the policy conversations through these functions, so the
same record reads the same everywhere. Chat messages (TRL's conversational
format, a list of {role, content}) become those turns.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rlaif.errors import RlaifError

ROLE_NAMES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}
_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):[ \t]?")
# Speaker labels that open a dialogue turn wherever a line starts with them ("Human:", "student:", "**User:**").
SPEAKERS = ("Human", "Assistant", "User", "AI", "H", "Student", "Teacher", "System", "Model", "Bot", "Customer",
            "Person", "Interviewer")
_LABEL = rf"[ \t]*[*_]{{0,2}}(?i:{'|'.join(SPEAKERS)})[*_]{{0,2}}[ \t]*:"
SPEAKER_TURN = re.compile(rf"\n{_LABEL}")
# Any other speaker: a paragraph that opens with a name of up to three words, a colon and speech ("Officer: No.",
# "Publicity officer: Cheese.").
NAMED_TURN = re.compile(r"\n\n[ \t]*[*_]{0,2}[A-Z][a-z]+(?:[ -][A-Za-z][a-z]+){0,2}[*_]{0,2}:[ \t]+\S")
_OWN_LABEL = re.compile(r"\A[ \t]*(?i:Assistant|AI|Model|Bot)[ \t]*:[ \t]*")  # the response restating its own label
_OTHER_FIRST = re.compile(rf"\A{_LABEL}")
# Stops of a response in the CAI plain format; `response_stops` adds the tokenizer's end-of-turn tokens.
RESPONSE_STOPS = ("\nHuman:", "\nAssistant:", "\nUser:")
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_turn|>", "<|endofturn|>")
PROMPT_FORMATS = ("auto", "chat", "plain")
RATIONALE_STOPS = ("\nHuman:", "\n\nHuman", "Therefore, the answer is", "\n\n\n", "Consider the following conversation")


def as_text(value: Any, where: str) -> str:
    """A text field: strings as they are, numbers as text, chat messages as "Human: ... / Assistant: ..." turns.

    A single assistant message (a response column in conversational form) is its content.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        if len(value) == 1 and value[0].get("role") in (None, "assistant"):
            return str(value[0]["content"])
        return "\n\n".join(f"{ROLE_NAMES.get(str(m.get('role') or 'user').lower(), str(m.get('role')).capitalize())}: "
                           f"{m['content']}" for m in value)
    raise RlaifError(f"{where} is a {type(value).__name__}, not text or chat messages; convert it to a string.")


def format_conversation(prompt: str) -> str:
    """The conversation as the CAI format shows it: Human/Assistant turns, without a dangling 'Assistant:'."""
    text = prompt.strip()
    if text.endswith("Assistant:"):
        text = text[: -len("Assistant:")].rstrip()
    if not text.startswith("Human:"):
        text = "Human: " + text
    return text


def to_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages from a prompt: CAI-style 'Human: ...\\n\\nAssistant: ...' turns, or one user message."""
    text = format_conversation(prompt)
    parts = _TURN.split(text)[1:]  # [role, content, role, content, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[role], "content": content.strip()} for role, content in zip(parts[::2], parts[1::2])]


def trim_response(text: str, stops: tuple[str, ...] = (), named_turns: bool = True) -> str:
    """The response up to where the model starts another speaker's turn, or the first stop string.

    A turn starts at a known speaker label (`SPEAKERS`, any case: "Human:", "student:", "**User:**") at the
    start of a line and, with `named_turns` (for plain-text transcripts, where base models invent dialogue), at a
    paragraph that opens with a short capitalised name, a colon and speech ("\n\nOfficer: No."). A response
    that restates its own label first ("Assistant: ...") keeps the text after it; one that opens with another
    speaker's label is all invented turn, so nothing is left.
    """
    text = _OWN_LABEL.sub("", text.lstrip("\n"), count=1)
    if _OTHER_FIRST.match(text):
        return ""
    turns = [m.start() for m in (SPEAKER_TURN.search(text), NAMED_TURN.search(text) if named_turns else None) if m]
    if turns:
        text = text[: min(turns)]
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def end_of_turn_marks(tokenizer: Any) -> tuple[str, ...]:
    """The special tokens that close a chat turn (Gemma's `<end_of_turn>`, ChatML's `<|im_end|>`, Llama 3's
    `<|eot_id|>`): the one the chat template writes after an assistant turn, and the known ones the vocabulary
    has. A model can write them in plain format too; decoding drops them and the next turn would follow."""
    marks = [m for m in END_OF_TURN_TOKENS if m in _added_tokens(tokenizer)]
    probe = _template_end_of_turn(tokenizer)
    return tuple(dict.fromkeys([*probe, *marks]))


def _added_tokens(tokenizer: Any) -> set[str]:
    try:
        return set(tokenizer.get_added_vocab()) | {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    except (AttributeError, TypeError):
        return set()


def _template_end_of_turn(tokenizer: Any) -> tuple[str, ...]:
    """The first special token the chat template writes after an assistant message's text, if any."""
    if not getattr(tokenizer, "chat_template", None):
        return ()
    probe = "RLAIFENDOFTURNPROBE"
    try:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}],
                                                 tokenize=False)
    except Exception:  # noqa: BLE001 (a template that refuses this chat teaches nothing about its end of turn)
        return ()
    tail = rendered[rendered.rfind(probe) + len(probe):] if probe in rendered else ""
    found = sorted((tail.find(t), t) for t in _added_tokens(tokenizer) if t and t in tail)
    return (found[0][1],) if found else ()


def response_stops(tokenizer: Any) -> tuple[str, ...]:
    """Where a policy's response ends: a new speaker turn, or an end-of-turn token (see `end_of_turn_marks`)."""
    return RESPONSE_STOPS + end_of_turn_marks(tokenizer)


def trim_rationale(text: str) -> str:
    """Keep the rationale up to where the model starts a new turn or answers on its own."""
    for stop in RATIONALE_STOPS:
        text = text.split(stop)[0]
    return text.strip()


# -- prompts as the policy reads them ----------------------------------------------------------------------------


def check_decoding(top_p: float, max_new_tokens: int, prompt_format: str) -> None:
    if not 0.0 < top_p <= 1.0:
        raise RlaifError(f"--top-p must be in (0, 1], got {top_p}.")
    if max_new_tokens < 1:
        raise RlaifError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if prompt_format not in PROMPT_FORMATS:
        raise RlaifError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, not {prompt_format!r}.")


def resolve_prompt_format(tokenizer: Any, wanted: str) -> str:
    """`chat` or `plain`: `auto` picks chat when the tokenizer has a chat template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if wanted == "chat" and not has_template:
        raise RlaifError("--prompt-format chat needs a tokenizer with a chat template; this model has none "
                         "(use --prompt-format plain or auto).")
    if wanted == "auto":
        return "chat" if has_template else "plain"
    return wanted


def render_prompt(tokenizer: Any, prompt: str, fmt: str) -> str:
    """The text the policy continues: chat template with a generation prompt, or 'Human: ...\\n\\nAssistant:'."""
    if fmt == "chat":
        return tokenizer.apply_chat_template(to_messages(prompt), tokenize=False, add_generation_prompt=True)
    return format_conversation(prompt) + "\n\nAssistant:"


def render_request(tokenizer: Any, text: str, fmt: str) -> str:
    """A rendered instruction (critique, revision, check) as the policy reads it: one user turn in chat format."""
    if fmt == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


