"""The bad-input table: each hostile input gets one line naming the fix, its exit code, no traceback, no side effect.

Every case runs the real CLI (click's CliRunner) on files written to tmp_path;
`{tmp}` in the files and arguments is that folder, `{model}` the tiny model.
The template escapes put the payload in both `evil` and `evil.j2`: a path
without the suffix once resolved to `evil.j2` and rendered it unsandboxed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli

PAIRS = [{"id": f"p{i}", "prompt": "Human: what is two plus two?", "response_a": "four", "response_b": f"bad {i}"}
         for i in range(3)]
HEADER = "{#- rlaif:\noptions: [A, B]\n-#}\n"
ESCAPE = '{{ cycler.__init__.__globals__.os.system("touch {tmp}/pwned") }}'
LABEL = ["label", "--input", "{tmp}/pairs.jsonl", "--out", "{tmp}/out.jsonl", "--model", "{model}"]
REVISE = ["revise", "--prompts", "{tmp}/prompts.jsonl", "--out", "{tmp}/chains.jsonl", "--model", "{model}"]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


USAGE = 2  # a bad --config is a usage error (click's exit code 2); every other case exits 1

# (case id, files {name: text or bytes}, arguments, the message's fragment[, exit code])
CASES = [
    ("template path without .j2 escapes the sandbox", {"evil": HEADER + ESCAPE, "evil.j2": HEADER + ESCAPE},
     [*LABEL, "--template", "{tmp}/evil"], "stopped by the sandbox"),
    ("template escape given through --config", {"evil": HEADER + ESCAPE, "evil.j2": HEADER + ESCAPE,
                                                "run.yaml": "template: {tmp}/evil\n"},
     [*LABEL, "--config", "{tmp}/run.yaml"], "stopped by the sandbox"),
    ("critique template escape", {"evil": ESCAPE, "evil.j2": ESCAPE, "prompts.jsonl": jsonl([{"prompt": "hello"}])},
     [*REVISE, "--critique-template", "{tmp}/evil"], "stopped by the sandbox"),
    ("template exhausting memory with range", {"big.j2": HEADER + "{{ range(10**7)|list }}"},
     [*LABEL, "--template", "{tmp}/big.j2"], "Range too big"),
    ("template doubling a string", {"big.j2": HEADER + "{% set ns = namespace(s='ab') %}{% for i in range(60) %}"
                                    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"},
     [*LABEL, "--template", "{tmp}/big.j2"], "would be larger than"),
    ("template with nested loops", {"slow.j2": HEADER + "{% for i in range(99999) %}{% for j in range(99999) %}"
                                    "{% endfor %}{% endfor %}"},
     [*LABEL, "--template", "{tmp}/slow.j2"], "loops more than"),
    ("template including a file", {"inc.j2": HEADER + "{% include '/etc/passwd' %}"},
     [*LABEL, "--template", "{tmp}/inc.j2"], "failed to render"),
    ("config with a list for a single value", {"run.yaml": "k: [1, 2]\n"},
     [*LABEL, "--config", "{tmp}/run.yaml"], "`k` takes one value, not [1, 2]", USAGE),
    ("config with a python tag", {"run.yaml": 'model: !!python/object/apply:os.system ["touch {tmp}/pwned"]\n'},
     [*LABEL, "--config", "{tmp}/run.yaml"], "tags are not allowed", USAGE),
    ("config that is not UTF-8", {"run.yaml": b"k: 2\nmodel: caf\xe9\n"},
     [*LABEL, "--config", "{tmp}/run.yaml"], "run.yaml:2 is not UTF-8", USAGE),
    ("constitution with a python tag", {"c.yaml": "name: x\nprinciples: !!python/object/apply:os.getcwd []\n"},
     [*LABEL, "--constitution", "{tmp}/c.yaml"], "tags are not allowed"),
    ("JSONL input that is not UTF-8", {"pairs.jsonl": jsonl(PAIRS[:2]).encode() + b'{"prompt": "caf\xe9"}\n'},
     LABEL, "pairs.jsonl:3 is not UTF-8"),
    ("CSV input that is not UTF-8", {"pairs.csv": b"prompt,response_a,response_b\nhi,a,b\nhi,caf\xe9,b\n"},
     ["label", "--input", "{tmp}/pairs.csv", "--out", "{tmp}/out.jsonl", "--model", "{model}"],
     "pairs.csv:3 is not UTF-8"),
    ("identical id-less records", {"pairs.jsonl": jsonl([{k: v for k, v in PAIRS[0].items() if k != "id"}] * 2)},
     LABEL, "made from its content"),
    ("--k above the number of principles", {}, [*LABEL, "--k", "20"], "--k 20 is more than the 16 principles"),
    ("--k above the principles given with --only", {},
     [*LABEL, "--only", "harmless-ethical", "--only", "helpful-honest-harmless", "--k", "3"],
     "--k 3 is more than the 2 principles given with --only"),
    ("--column-map id= a missing column", {}, [*LABEL, "--column-map", "id=uid"], "id (mapped to 'uid')"),
    ("align --column-map id= a missing column", {"h.jsonl": jsonl([{"prompt": "p", "chosen": "a", "rejected": "b"}])},
     ["align", "--human", "{tmp}/h.jsonl", "--column-map", "id=uid", "--out", "{tmp}/rep", "--model", "{model}"],
     "lacks column 'uid' (mapped to id)"),
    ("train-rm --column-map id= a missing column", {"l.jsonl": jsonl([{"prompt": "p", "chosen": "a",
                                                                        "rejected": "b"}])},
     ["train-rm", "--labels", "{tmp}/l.jsonl", "--column-map", "id=uid", "--out", "{tmp}/rm"], "id (mapped to 'uid')"),
    ("input given as the output", {}, ["label", "--input", "{tmp}/pairs.jsonl", "--out", "{tmp}/pairs.jsonl",
                                       "--model", "{model}", "--overwrite"], "is the input"),
    ("resume without the meta file", {"out.jsonl": jsonl(PAIRS[:1])}, [*LABEL, "--resume"],
     "out.jsonl.meta.json is missing"),
    ("prompt too long with --on-too-long error", {},
     [*LABEL, "--max-prompt-tokens", "8", "--on-too-long", "error"], "too long for the model"),
    ("align's human file inside its output", {"rep/pairs.jsonl": jsonl([{"prompt": "p", "chosen": "a",
                                                                          "rejected": "b"}])},
     ["align", "--human", "{tmp}/rep/pairs.jsonl", "--out", "{tmp}/rep", "--model", "{model}"], "is the input"),
    ("revise export over its input", {"c.sft.jsonl": jsonl([{"prompt": "hello"}])},
     ["revise", "--prompts", "{tmp}/c.sft.jsonl", "--out", "{tmp}/c.jsonl", "--model", "{model}", "--export", "sft"],
     "is the input"),
    ("train-rm labels inside its output", {"rm/labels.jsonl": jsonl([{"prompt": "p", "chosen": "a",
                                                                       "rejected": "b"}])},
     ["train-rm", "--labels", "{tmp}/rm/labels.jsonl", "--out", "{tmp}/rm", "--overwrite"], "inside --out"),
]


@pytest.mark.parametrize(("files", "args", "fragment", "code"), [(*c[1:4], c[4] if len(c) > 4 else 1) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line(files, args, fragment, code, tiny_model_dir, tmp_path):
    (tmp_path / "pairs.jsonl").write_text(jsonl(PAIRS), encoding="utf-8")
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{model}", tiny_model_dir) for a in args]
    before = (tmp_path / "pairs.jsonl").read_bytes()
    result = CliRunner().invoke(cli, argv)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a handled error, not a crash
    assert "Traceback" not in result.output
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert not (tmp_path / "pwned").exists()  # no template or config ran a command
    assert (tmp_path / "pairs.jsonl").read_bytes() == before  # the input is untouched
