"""Built-in templates load, render their variables, and the late-principle layout shares more."""

from __future__ import annotations

import pytest

from rlaif.backends.hf import HFBackend
from rlaif.label import LabelConfig, Labeller
from rlaif.templates import builtin_templates, load_template

CHOICE = ["cai-choice", "cai-choice-cot", "cai-choice-late"]
PAIRS = [{"id": f"p{i}", "prompt": "Human: the cat sat on the mat and the dog is good",
          "response_a": f"the cat is good {i}", "response_b": "the dog is bad"} for i in range(3)]


def test_choice_templates_are_built_in_and_render():
    assert set(CHOICE) <= set(builtin_templates())
    for name in CHOICE:
        template = load_template(name)
        text = template.render(conversation="Human: hi", principle="PRINCIPLE", response_a="RA", response_b="RB",
                               few_shot=[])
        assert template.options == ["A", "B"]
        assert text.index("RA") < text.index("RB") and "PRINCIPLE" in text


@pytest.mark.parametrize("name", CHOICE[::2])
def test_late_principle_template_gives_the_same_kind_of_label(tiny_model_dir, name):
    backend = HFBackend.load(tiny_model_dir)
    labels = Labeller(LabelConfig(model=tiny_model_dir, template=name, principles="k", k=3, no_cache=True),
                      backend).label(PAIRS)
    assert all(0.0 < label.p_a < 1.0 and len(label.by_principle) == 3 for label in labels)


def test_late_principle_template_computes_fewer_tokens(tiny_model_dir, tmp_path):
    # principles in the tiny vocabulary (the built-in ones would be mostly <unk>, hence alike)
    texts = ["Choose the more honest response", "Which response is more kind", "Choose the good response because",
             "Which is the more good honest kind response"]
    constitution = tmp_path / "words.yaml"
    constitution.write_text("name: words\nprinciples:\n" + "".join(f"  - id: p{i}\n    text: {t}\n" for i, t in enumerate(texts)))
    pairs = [{**pair, "response_a": pair["response_a"] + " and the cat sat on the mat " * 3} for pair in PAIRS]
    tokens = {}
    for name in ("cai-choice", "cai-choice-late"):
        backend = HFBackend.load(tiny_model_dir)
        Labeller(LabelConfig(model=tiny_model_dir, template=name, constitution=str(constitution), principles="all",
                             no_cache=True), backend).label(pairs)
        tokens[name] = backend.stats.tokens
    # the options (both responses) are computed once per order instead of once per principle and order
    assert tokens["cai-choice-late"] < 0.8 * tokens["cai-choice"]
