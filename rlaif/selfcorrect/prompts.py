"""SCoRe's two prompts: x for the first attempt, and x ⊕ y1 ⊕ bridge for the second.

The bridge is what the chat template puts between the end of the assistant's first
answer and the start of its second: it closes the assistant turn, opens a user turn
holding the self-correction instruction, closes it and opens the assistant turn
again. It is read off the policy's own chat template (rendered with placeholder
turns), or is "\\n\\nHuman: " + instruction + "\\n\\nAssistant:" in the plain
Human/Assistant format (`rlaif.text`).

Two builders share it:
- text (`rlaif self-correct`, any back end): chat(x) + y1 + bridge, as one string;
- token ids (the trainer): x_ids ⊕ y1_ids ⊕ bridge_ids, never re-tokenising y1.
  When y1 ends with the end-of-turn token that the bridge starts with (the model
  closed its turn itself), that token is not repeated.

Instructions (App. C of Kumar et al. 2024 for math; a constitutional one for AI feedback):
`--instruction math|constitution|TEXT`, `--first-instruction math|none|TEXT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlaif.errors import RlaifError
from rlaif.text import SPEAKER_TURN

_ANSWER_FORM = ('write it in the form "Final Answer: The final answer is $answer$. I hope it is correct."')
MATH_INSTRUCTION = ("There might be an error in the solution above because of lack of understanding of the question. "
                    "Please correct the error, if any, and rewrite the solution. Only output the final solution! "
                    f"At the end of the Solution, when you give your final answer, {_ANSWER_FORM}")
MATH_FIRST = ("You are a math expert. When you respond, respond only with the Solution of the final Problem, thinking "
              f"step by step. At the end of the Solution, when you give your final answer, {_ANSWER_FORM}")
CONSTITUTION_INSTRUCTION = ("There might be something harmful, unethical, dishonest or unhelpful in the response above. "
                            "Please revise it to be more harmless, honest and helpful, if needed, and rewrite the "
                            "response. Only output the final response!")
INSTRUCTIONS = {"math": MATH_INSTRUCTION, "constitution": CONSTITUTION_INSTRUCTION}
FIRST_INSTRUCTIONS = {"math": MATH_FIRST, "none": ""}
PLAIN_STOPS = ("\nHuman:", "\nAssistant:")  # what a back end may stop at; `cut_at_turn` has the last word
_SENTINELS = ("RLAIFSCOREPROMPTXQ", "RLAIFSCOREATTEMPTXQ", "RLAIFSCOREINSTRUCTIONXQ")


def resolve_instruction(value: str, presets: dict[str, str], flag: str, allow_empty: bool = False) -> str:
    """A preset's text, or the value itself as the instruction."""
    text = presets.get(value, value)
    if not text.strip() and not allow_empty:
        raise RlaifError(f"{flag} is empty: give a preset ({', '.join(presets)}) or the instruction's text.")
    return text


def first_prompt(question: str, first_instruction: str) -> str:
    """The user turn of the first attempt: the first instruction (if any), then the problem."""
    if not first_instruction:
        return question
    label = "Problem: " if first_instruction == MATH_FIRST else ""
    return f"{first_instruction}\n\n{label}{question}"


@dataclass(frozen=True)
class Bridge:
    """The text between the first attempt and the second: `before` + instruction + `after`."""

    before: str
    after: str

    def text(self, instruction: str) -> str:
        return self.before + instruction + self.after


PLAIN_BRIDGE = Bridge("\n\nHuman: ", "\n\nAssistant:")


def chat_bridge(tokenizer: Any) -> Bridge:
    """The bridge of the tokenizer's chat template, read off placeholder turns.

    It needs the template to render [user x, assistant y1, user instruction] as the
    first prompt's own rendering followed by y1, so that the second prompt extends the first.
    """
    question, attempt, instruction = _SENTINELS
    first = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                          add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": attempt},
         {"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
    rest = full[len(first):] if full.startswith(first) else ""
    before, sep, after = rest[len(attempt):].partition(instruction) if rest.startswith(attempt) else ("", "", "")
    if not sep:
        raise RlaifError("This model's chat template does not render a second user turn as a continuation of the "
                         "first prompt and the first answer, so the second attempt cannot extend the first; "
                         "use --prompt-format plain.")
    return Bridge(before, after)


def bridge_for(tokenizer: Any, prompt_format: str) -> Bridge:
    return chat_bridge(tokenizer) if prompt_format == "chat" else PLAIN_BRIDGE


def stops_for(prompt_format: str) -> tuple[str, ...]:
    return PLAIN_STOPS if prompt_format == "plain" else ()


def cut_at_turn(text: str) -> str:
    """The attempt up to where the model starts another speaker's turn (plain format), unstripped."""
    match = SPEAKER_TURN.search(text)
    return text[: match.start()] if match else text


def second_prompt_text(first_rendered: str, attempt1: str, bridge: Bridge, instruction: str) -> str:
    """chat(x) + y1 + bridge: the second prompt as text, for back ends that take text."""
    return first_rendered + attempt1 + bridge.text(instruction)


class AttemptIds:
    """The trainer's token-level pieces: the bridge's ids and the plain format's end of an attempt."""

    def __init__(self, tokenizer: Any, prompt_format: str, instruction: str, eos_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self.bridge_ids = list(tokenizer.encode(bridge_for(tokenizer, prompt_format).text(instruction),
                                                add_special_tokens=False))
        self.eos_ids = set(eos_ids)
        if not self.bridge_ids:
            raise RlaifError("The self-correction bridge encodes to no tokens; give a non-empty --instruction.")

    def bridge_after(self, attempt_ids: Sequence[int]) -> list[int]:
        """The bridge ids that follow this first attempt (its own end-of-turn token is not repeated)."""
        if attempt_ids and attempt_ids[-1] in self.eos_ids and self.bridge_ids[0] == attempt_ids[-1]:
            return self.bridge_ids[1:]
        return list(self.bridge_ids)

    def trim(self, ids: Sequence[int]) -> int:
        """How many of an attempt's tokens to keep: in the plain format, those before a new speaker turn."""
        ids = list(ids)
        if self.prompt_format != "plain":
            return len(ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        match = SPEAKER_TURN.search(text)
        if match is None:
            return len(ids)
        low, high = 0, len(ids)  # the longest prefix whose text ends at or before the turn
        while low < high:
            mid = (low + high + 1) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=False)) <= match.start():
                low = mid
            else:
                high = mid - 1
        return low

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def strip_turn(text: str) -> str:
    """An attempt as reported: cut at a new speaker turn, outer whitespace removed."""
    return cut_at_turn(text).strip()
