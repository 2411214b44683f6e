"""The first hour of a new user: human preference files label as they are, quiet output, Ctrl-C that says how to
continue, an offline hub id that fails at once, resume refusals that name the settings, low-mass warnings, a Python
API that takes what the CLI takes, help texts that mark options one way, and plots whose legends cover nothing."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rlaif.align import AlignConfig, Scored, build_report
from rlaif.align.report import _plot_principles, _plot_reliability, render_markdown
from rlaif.cli import cli
from rlaif.cli.quiet import QUIET_ENV, quiet_output
from rlaif.drlaif import ScoreConfig, score_records
from rlaif.errors import RlaifError
from rlaif.generate import GenerateConfig, generate_pairs
from rlaif.label import LabelConfig, label_pairs
from rlaif.records import content_id
from rlaif.revise import ReviseConfig, revise_prompts

REPO = Path(__file__).resolve().parents[1]
HUMAN = [{"prompt": f"Human: what is {w}?\n\nAssistant:", "chosen": f"{w} is good", "rejected": "no"}
         for w in ("two", "four", "hello", "bye", "ok", "kind")]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def lines(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def rlaif(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


# -- item 1: the data the README uses ships in the clone -------------------------------------------------------


def test_shipped_human_samples_have_provenance_and_licences():
    data = REPO / "examples" / "data"
    provenance = json.loads((data / "provenance.json").read_text())
    for name in ("hh_rlhf_harmless.jsonl", "pandalm.jsonl"):
        rows = lines(data / name)
        assert len(rows) == provenance[name]["pairs"] >= 100
        assert all(r["prompt"].strip() and r["chosen"].strip() != r["rejected"].strip() for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
    assert "MIT License" in (data / "LICENSE.hh-rlhf").read_text()
    assert "Apache License" in (data / "LICENSE.PandaLM").read_text()
    for step in ("generate", "label", "align", "train-rm", "grpo", "revise"):
        assert f"step {step} rlaif {step}" in (REPO / "examples" / "flow.sh").read_text()
    assert "../shared" not in (REPO / "examples" / "flow.sh").read_text()


@pytest.mark.parametrize("command, path", [("grpo", "examples/grpo_drlaif.yaml"), ("ppo", "examples/ppo_drlaif.yaml")])
def test_example_configs_name_only_real_flags(command, path):
    import yaml  # noqa: PLC0415

    flags = {o[2:].split("/")[0].replace("-", "_") for p in cli.commands[command].params for o in p.opts
             if o.startswith("--")}
    assert set(yaml.safe_load((REPO / path).read_text())) <= flags


# -- item 2: TRL preference files label directly --------------------------------------------------------------


def test_label_reads_a_preference_file_and_records_the_humans_slot(tiny_model_dir, tmp_path):
    human = write_jsonl(tmp_path / "prefs.jsonl", HUMAN)
    out = tmp_path / "labels.jsonl"
    result = rlaif("label", "--input", human, "--out", str(out), "--model", tiny_model_dir, "--principles", "one",
                   "--no-cache")
    assert result.exit_code == 0, result.output
    assert "human's choice is response A in 3 pairs and B in 3" in result.output
    rows = lines(out)
    assert Counter(r["human"] for r in rows) == {"a": 3, "b": 3}
    for row, pair in zip(rows, HUMAN):
        assert row["id"] == content_id(pair["prompt"], pair["chosen"], pair["rejected"])
        assert row["response_" + row["human"]] == pair["chosen"]
        assert row["response_" + ("b" if row["human"] == "a" else "a")] == pair["rejected"]
    agree = sum((r["p_a"] > 0.5) == (r["human"] == "a") for r in rows) / 6  # no ties on a random model
    assert f"agrees with the human on {agree:.1%} of 6 pairs" in result.output
    report = rlaif("align", "--human", human, "--labels", str(out), "--out", str(tmp_path / "rep"), "--no-plots",
                   "--n-boot", "20")
    assert report.exit_code == 0 and json.loads((tmp_path / "rep" / "report.json").read_text())["n_scored"] == 6


def test_limit_on_a_preference_file_still_splits_the_slots_in_half(tiny_model_dir, tmp_path):
    human = write_jsonl(tmp_path / "prefs.jsonl", HUMAN)
    out = tmp_path / "labels.jsonl"
    result = rlaif("label", "--input", human, "--out", str(out), "--model", tiny_model_dir, "--principles", "one",
                   "--limit", "4", "--no-cache")
    assert result.exit_code == 0, result.output
    assert Counter(r["human"] for r in lines(out)) == {"a": 2, "b": 2}


# -- item 5: quiet output, Ctrl-C, offline hub ids, resume refusals, low option mass ---------------------------


def python_rlaif(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlaif", *args]


def fresh_env() -> dict[str, str]:
    """The test environment without what an in-process CLI run set for itself (see rlaif.cli.quiet)."""
    return {k: v for k, v in os.environ.items() if k not in QUIET_ENV}


def test_ctrl_c_names_the_resume_command_and_marks_the_run_interrupted(tiny_model_dir, tmp_path):
    """A real process, a real SIGINT: one line naming the command that continues, an `interrupted` meta, no
    library chatter; the printed command (with --verbose, which shows that chatter) finishes the run."""
    pairs = [{"id": f"p{i}", "prompt": "Human: hello", "response_a": "good " * (i % 7 + 1), "response_b": f"bad {i}"}
             for i in range(240)]
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "labels.jsonl"
    args = ["label", "--input", source, "--out", str(out), "--model", tiny_model_dir, "--principles", "all",
            "--chunk-pairs", "2", "--no-cache"]
    # Ctrl-C's default action even when this test runs under a shell that ignores SIGINT (a background job),
    # since a child inherits an ignored SIGINT and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen(python_rlaif(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=fresh_env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    said = [line for line in stderr.splitlines() if line.strip()]
    notes = [line for line in said if line.startswith("Interrupted")]
    assert len(notes) == 1 and "Traceback" not in stderr, stderr
    assert not [line for line in said if "Warning" in line or "LOAD REPORT" in line or "Loading weights" in line]
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    assert meta["status"] == "interrupted"
    done = len(lines(out))
    assert 0 < done < len(pairs)
    command = shlex.split(notes[0].split("Continue with: ", 1)[1])
    assert command[:2] == ["rlaif", "label"] and "--resume" in command
    resumed = subprocess.run(python_rlaif("--verbose", *command[1:]), capture_output=True, text=True, timeout=300,
                             env=fresh_env())
    assert resumed.returncode == 0, resumed.stderr
    assert "Loading weights" in resumed.stderr  # --verbose shows the library's own bar that a normal run hides
    assert [r["id"] for r in lines(out)] == [p["id"] for p in pairs]  # every pair once, in order
    assert json.loads((tmp_path / "labels.jsonl.meta.json").read_text())["status"] == "done"


def test_trainer_metric_dicts_and_load_reports_are_hidden(tiny_model_dir):
    script = f"""
from types import SimpleNamespace
from rlaif.cli.quiet import quiet_output
quiet_output(verbose=False)
import transformers.trainer_callback as callbacks
from transformers import LlamaForSequenceClassification
from transformers.utils import logging
progress = callbacks.ProgressCallback()
progress.training_bar = SimpleNamespace(write=lambda text: print("bar wrote", text))
state = SimpleNamespace(is_world_process_zero=True, is_local_process_zero=True)
progress.on_log(None, state, None, logs={{"loss": 0.5}})
callbacks.PrinterCallback().on_log(None, state, None, logs={{"loss": 0.5}})  # the Trainer's pick with disable_tqdm
LlamaForSequenceClassification.from_pretrained({tiny_model_dir!r}, num_labels=1)
print("--- verbose from here", file=__import__("sys").stderr)
logging.set_verbosity_warning()
LlamaForSequenceClassification.from_pretrained({tiny_model_dir!r}, num_labels=1)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=fresh_env())
    assert run.returncode == 0, run.stderr
    assert "bar wrote" not in run.stdout and "'loss'" not in run.stdout  # no metric dict, under a bar or printed
    quiet, verbose = run.stderr.split("--- verbose from here")
    assert "LOAD REPORT" not in quiet and "LOAD REPORT" in verbose  # the same load reports when not silenced


@pytest.mark.parametrize("message, category", [
    ("`past_key_values` is deprecated and will be removed in version 5.40.0 for `LlamaForCausalLM.forward`.", FutureWarning),
    ("`gradient_checkpointing_enable` is deprecated and will be removed in v6.", FutureWarning),
    ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning),
    ("'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used.",
     UserWarning),
    ("You are importing from 'trl.experimental'. APIs here are unstable.", UserWarning),
])
def test_library_notices_are_silenced_on_a_normal_run(message, category):
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as seen:  # restores the filters afterwards
        warnings.simplefilter("always")
        quiet_output(verbose=False)
        warnings.warn(message, category)
        warnings.warn("rlaif's own warning stays", UserWarning)
    assert [str(w.message) for w in seen] == ["rlaif's own warning stays"]


@pytest.mark.parametrize("command", ["ppo", "grpo"])
def test_an_rl_usage_error_comes_before_any_trl_import(command, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    script = f"""
import sys
from click.testing import CliRunner
from rlaif.cli import cli
result = CliRunner().invoke(cli, [{command!r}, "--prompts", {prompts!r}, "--policy", "default", "--output-dir",
                                  {str(tmp_path / "out")!r}, "--reward-model", "rm", "--d-rlaif"])
print(result.exit_code, result.output.count("Error"), "trl" in sys.modules, "torch" in sys.modules)
print(result.output)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=fresh_env())
    code, errors, trl, torch_loaded = run.stdout.split("\n")[0].split()
    assert code != "0" and errors == "1" and trl == "False" and torch_loaded == "False", run.stdout + run.stderr


def test_an_offline_hub_id_fails_at_once_in_one_line(tmp_path, monkeypatch):
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "response_a": "a", "response_b": "b"}])
    asked: list[bool] = []
    import transformers  # noqa: PLC0415

    real = transformers.AutoTokenizer.from_pretrained

    def record(*args, **kwargs):
        asked.append(kwargs.get("local_files_only", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = rlaif("label", "--input", source, "--out", str(tmp_path / "o.jsonl"), "--model", "some-org/some-model")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "'some-org/some-model' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in result.output
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    started = time.monotonic()
    result = rlaif("label", "--input", source, "--out", str(tmp_path / "o.jsonl"), "--model", "some-org/some-model")
    assert result.exit_code == 1 and "127.0.0.1 cannot be reached" in result.output, result.output
    assert asked == [True, True]  # never a download attempt, so no minute of retries
    assert time.monotonic() - started < 30


def test_a_refused_resume_names_the_settings_that_differ(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "response_a": "good", "response_b": "bad"}])
    out = str(tmp_path / "labels.jsonl")
    first = rlaif("label", "--input", source, "--out", out, "--model", tiny_model_dir, "--k", "2", "--no-cache")
    assert first.exit_code == 0, first.output
    again = rlaif("label", "--input", source, "--out", out, "--model", tiny_model_dir, "--k", "3", "--seed", "4",
                  "--resume", "--no-cache")
    assert again.exit_code == 1
    assert "was made with other settings (k: 2 then, 3 now; seed: 0 then, 4 now)" in again.output


def test_label_and_score_warn_when_the_options_get_little_mass(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "response_a": "good", "response_b": "bad"}])
    label = rlaif("label", "--input", pairs, "--out", str(tmp_path / "l.jsonl"), "--model", tiny_model_dir, "--no-cache")
    mass = lines(tmp_path / "l.jsonl")[0]["option_mass"]
    assert mass < 0.5 and f"Warning: the options got only {mass:.0%} of the model's probability" in label.output
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "hi", "response": "good"}])
    score = rlaif("score", "--input", answers, "--out", str(tmp_path / "s.jsonl"), "--model", tiny_model_dir, "--no-cache")
    assert score.exit_code == 0, score.output
    assert "Warning: the ratings got only" in score.output


# -- item 6: the Python API takes what the CLI takes -------------------------------------------------------------


def test_every_stage_function_takes_records_without_ids(tiny_model_dir, tmp_path):
    pairs = [{"prompt": "hi", "response_a": "good", "response_b": "bad"}]
    rows = label_pairs(pairs, LabelConfig(model=tiny_model_dir, principles="one", no_cache=True), tmp_path / "l.jsonl",
                       progress=False)
    assert rows[0]["id"] == content_id("hi", "good", "bad")
    scored = score_records([{"prompt": "hi", "response": "good"}], ScoreConfig(model=tiny_model_dir, no_cache=True),
                           tmp_path / "s.jsonl", progress=False)
    assert scored[0]["id"] == content_id("hi", "good")
    prompts = [{"prompt": "hello"}]
    generate_pairs(prompts, GenerateConfig(model=tiny_model_dir, n=2, max_new_tokens=3, no_cache=True),
                   tmp_path / "g.jsonl", progress=False)
    assert {r["prompt_id"] for r in lines(tmp_path / "g.jsonl")} <= {content_id("hello")}
    revise_prompts(prompts, ReviseConfig(model=tiny_model_dir, rounds=1, max_new_tokens=3, no_cache=True),
                   tmp_path / "r.jsonl", progress=False)
    assert [c["id"] for c in lines(tmp_path / "r.jsonl")] == [content_id("hello")]


@pytest.mark.parametrize("call", ["label", "score", "generate", "revise"])
def test_every_stage_function_names_a_missing_field_and_a_repeat(call, tmp_path):
    configs = {"label": (label_pairs, LabelConfig(), {"prompt": "hi", "response_a": "a"}, "response_b"),
               "score": (score_records, ScoreConfig(), {"prompt": "hi"}, "response"),
               "generate": (generate_pairs, GenerateConfig(), {"text": "hi"}, "prompt"),
               "revise": (revise_prompts, ReviseConfig(), {"text": "hi"}, "prompt")}
    function, config, record, missing = configs[call]
    with pytest.raises(RlaifError, match=f"Record 1 lacks {missing}; each record needs .*\\(id optional\\)"):
        function([record], config, tmp_path / "out.jsonl")
    full = {"prompt": "hi", "response_a": "a", "response_b": "b", "response": "r"}
    with pytest.raises(RlaifError, match="Record 2: duplicate id .*repeats an earlier one"):
        function([full, dict(full)], config, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # refused before any model loads or any file is written


@pytest.mark.parametrize("call", ["label", "score"])
def test_every_stage_function_refuses_empty_text_like_the_cli(call, tiny_model_dir, tmp_path):
    function, config, record = {
        "label": (label_pairs, LabelConfig(model=tiny_model_dir, no_cache=True),
                  {"prompt": "hi", "response_a": " ", "response_b": "b"}),
        "score": (score_records, ScoreConfig(model=tiny_model_dir, no_cache=True), {"prompt": "hi", "response": ""}),
    }[call]
    with pytest.raises(RlaifError, match="is empty; remove the record or fill it in"):
        function([record], config, tmp_path / "out.jsonl")


# -- item 7: help texts and plots -------------------------------------------------------------------------------


def test_every_command_marks_required_and_repeatable_options_the_same_way():
    for name, command in cli.commands.items():
        ctx = click.Context(command, info_name=name)
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            _, text = param.get_help_record(ctx)
            assert ("required" in text) == param.required, (name, param.opts, text)
            assert ("[repeatable" in text or "; repeatable" in text) == param.multiple, (name, param.opts, text)
            assert "Repeatable." not in text and "Repeat the flag" not in text, (name, param.opts)


def test_the_command_list_is_not_cut_off():
    listing = rlaif("--help").output.split("Commands:")[1]
    assert listing.count("\n") > 6 and "..." not in listing


def test_generate_range_checks_n_and_temperature():
    assert "Invalid value for '--n': 1 is not in the range x>=2" in rlaif("generate", "--prompts", "p", "--out", "o",
                                                                          "--n", "1").output
    assert "'--temperature': 0.0 is not in the range x>0" in rlaif("generate", "--prompts", "p", "--out", "o",
                                                                  "--temperature", "0").output


def synthetic_report() -> dict:
    scored = []
    for i in range(40):
        p_ab, p_ba = 0.2 + 0.6 * ((i * 7) % 10) / 9, 0.3 + 0.4 * ((i * 3) % 5) / 4
        scored.append(Scored(id=str(i), human_a=i % 2 == 0, p_a=(p_ab + p_ba) / 2, p_a_ab=p_ab, p_a_ba=p_ba,
                             len_a=10 + i, len_b=30, by_principle={"kind": p_ab, "honest": p_ba} if i % 4 else {"kind": p_ab},
                             by_principle_orders={}, option_mass=0.8))
    return build_report(scored, Counter(), 40, AlignConfig(n_boot=50))


class RecordingFigure:
    """matplotlib's Figure, keeping the last one drawn so a test can look at it."""

    last = None

    def __new__(cls, *args, **kwargs):
        from matplotlib.figure import Figure  # noqa: PLC0415

        RecordingFigure.last = Figure(*args, **kwargs)
        return RecordingFigure.last


@pytest.mark.parametrize("plot", [_plot_reliability, _plot_principles])
def test_plot_legends_cover_no_data_and_principles_show_n(plot, tmp_path):
    pytest.importorskip("matplotlib")
    report = synthetic_report()
    plot(RecordingFigure, report, tmp_path / "plot.png")
    fig = RecordingFigure.last
    ax = fig.axes[0]
    legend = fig.legends[0].get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0  # below the axes: over no point, bar or error bar
    if plot is _plot_principles:
        n = {pid: e["n"] for pid, e in report["by_principle"].items()}
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{pid} (n={k})" for pid, k in n.items()]
        assert n == {"kind": 40, "honest": 30}


def test_report_md_says_which_response_is_a():
    text = render_markdown(synthetic_report())
    assert "Response A is each pair's `response_a`" in text and "the human chose A in 50.0% of them" in text
