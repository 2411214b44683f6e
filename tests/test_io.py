"""Readers and writers: clear errors, chat messages as text, whole groups on resume."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.text import as_text
from rlaif.io import (
    RecordWriter,
    done_ids,
    drop_last_group,
    read_records,
    read_rows,
)


def test_json_suffix_holding_json_lines_is_read(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [r["id"] for r in read_rows(path)] == ["a", "b"]


@pytest.mark.parametrize("name, content, message", [
    ("bad.csv", 'prompt,response_a\n"unterminated,x\n', "Cannot read"),
    ("empty.csv", "", "Cannot read"),
    ("bad.parquet", "not parquet at all", "Cannot read"),
    ("list.json", "[1, 2]", "list of JSON objects"),
    ("bad.jsonl", '{"prompt": "x"}\n{oops\n', "bad.jsonl:2 is not valid JSON"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(RlaifError, match=message):
        read_rows(path)


def test_chat_messages_become_turns_and_other_objects_fail():
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert as_text(messages, "x") == "Human: hi\n\nAssistant: hello"
    assert as_text([{"role": "assistant", "content": "only me"}], "x") == "only me"
    assert as_text(3, "x") == "3"
    with pytest.raises(RlaifError, match="not text or chat messages"):
        as_text({"x": 1}, "record 1: field 'prompt'")


def test_read_records_renders_conversational_columns(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}],
                                "response_a": [{"role": "assistant", "content": "a"}], "response_b": "b"}) + "\n")
    [record] = read_records(path, ["prompt", "response_a", "response_b"])
    assert (record["prompt"], record["response_a"], record["response_b"]) == ("Human: q", "a", "b")


def test_drop_last_group_cuts_a_split_group_and_a_torn_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with RecordWriter(path) as writer:
        writer.write_all([{"id": "1", "prompt_id": "p1"}, {"id": "2", "prompt_id": "p1"}])
        writer.write_all([{"id": "3", "prompt_id": "p2"}])
    with path.open("a") as handle:
        handle.write('{"id": "4", "prompt_id": "p2"')  # killed mid-write
    drop_last_group(path, "prompt_id")
    assert [r["id"] for r in read_rows(path)] == ["1", "2"]
    assert done_ids(path) == {"1", "2"}


def test_config_file_scalar_for_a_repeatable_option(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response_a": "a", "response_b": "b"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"input: {pairs}\nonly: no-such-principle\nconstitution: cai-harmless\n")
    result = CliRunner().invoke(cli, ["label", "--config", str(config), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert "Unknown principle 'no-such-principle'" in result.output
    assert "Traceback" not in result.output


def test_output_under_a_file_fails_before_any_work(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response_a": "a", "response_b": "b"}) + "\n")
    result = CliRunner().invoke(cli, ["label", "--input", str(pairs), "--out", str(blocker / "x.jsonl"),
                                      "--model", "/no/such/model"])
    assert result.exit_code == 1 and "is a file, not a directory" in result.output
    assert "Traceback" not in result.output


def test_missing_model_directory_is_named(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "response_a": "a", "response_b": "b"}) + "\n")
    result = CliRunner().invoke(cli, ["label", "--input", str(pairs), "--out", str(tmp_path / "o.jsonl"),
                                      "--model", str(tmp_path / "nosuchmodel")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output


def test_unknown_column_map_field_and_yaml_mapping(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(RlaifError, match="unknown field\\(s\\) respons"):
        read_records(data, ["prompt", "response"], {"respons": "chosen"})
    config = tmp_path / "run.yaml"
    config.write_text(f"input: {data}\ncolumn-map: {{response_a: chosen, response_b: rejected}}\nonly: [nope]\n")
    result = CliRunner().invoke(cli, ["label", "--config", str(config), "--out", str(tmp_path / "o.jsonl")])
    # the mapping was understood (no column error); the run stops at the unknown principle, before any model loads
    assert result.exit_code == 1 and "Unknown principle 'nope'" in result.output


@pytest.mark.parametrize("command", [
    ["train-rm", "--labels", "x.jsonl", "--out", "{out}"],
    ["grpo", "--prompts", "x.jsonl", "--policy", "default", "--d-rlaif", "--output-dir", "{out}"],
])
def test_trained_outputs_are_not_silently_replaced(tmp_path, command):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    args = [a.replace("{out}", str(out)) for a in command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "is not empty: pass --overwrite" in result.output


def test_align_refuses_to_mix_reports_of_two_human_files(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"source": {"human": str(tmp_path / "other.jsonl")}}))
    (out / "reliability.png").write_bytes(b"old")
    human = tmp_path / "prefs.jsonl"
    human.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    args = ["align", "--human", str(human), "--labels", str(tmp_path / "labels.jsonl"), "--out", str(out), "--no-plots"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "holds the report for" in result.output and "--overwrite" in result.output
    CliRunner().invoke(cli, args + ["--overwrite"])  # no labels file: it fails later, but the stale report is gone
    assert not (out / "reliability.png").exists() and not (out / "report.json").exists()
