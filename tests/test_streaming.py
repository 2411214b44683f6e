"""Inputs read in batches and outputs never held: the streaming readers, IdSet, StageRun and the shard merge."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.idset import IdSet
from rlaif.io import iter_rows, read_records, read_rows, stream_records
from rlaif.label import LabelConfig, label_pairs
from rlaif.records import content_id
from rlaif.shard_merge import merge_outputs
from rlaif.shards import StageRun

FIELDS = ["prompt", "response_a", "response_b"]
FAKE_RULES = [("good", {"A": 0.6, "B": 0.2}), ("four", {"A": 0.1, "B": 0.7})]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(n: int, start: int = 0) -> list[dict]:
    words = "hello bye yes no good bad ok what two plus four kind honest".split()
    return [{"id": f"p{i:03d}", "prompt": f"Human: {words[i % 13]} {words[(i * 7) % 13]}", "response_a": words[(i + 3) % 13],
             "response_b": words[(i + 5) % 13]} for i in range(start, start + n)]


# -- readers -------------------------------------------------------------------------------------------------------


def test_iter_rows_gives_read_rows_for_jsonl_parquet_and_a_saved_dataset(tmp_path):
    import pandas as pd
    from datasets import Dataset

    rows = [{"id": f"r{i}", "prompt": f"q{i}", "n": i} for i in range(10)]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    saved = tmp_path / "saved"
    Dataset.from_list(rows).save_to_disk(str(saved))
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps(rows))
    for path in (jsonl, parquet, saved, listed):
        assert list(iter_rows(path, batch_rows=3)) == read_rows(path) == rows, path  # batches of 3: 4 batches


def test_iter_rows_keeps_csv_cells_as_written_and_names_unreadable_files(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("id,prompt,response_a,response_b\n007,q,1.50,b\n8,,x,y\n")
    assert list(iter_rows(csv, batch_rows=1)) == [
        {"id": "007", "prompt": "q", "response_a": "1.50", "response_b": "b"},
        {"id": "8", "prompt": "", "response_a": "x", "response_b": "y"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(RlaifError, match="bad.jsonl:2 is not valid JSON"):
        list(iter_rows(bad))
    with pytest.raises(RlaifError, match="Cannot read"):
        (tmp_path / "empty.csv").write_text("")
        list(iter_rows(tmp_path / "empty.csv"))
    with pytest.raises(RlaifError, match="does not exist"):
        list(iter_rows(tmp_path / "missing.jsonl"))


def test_record_stream_gives_read_records_and_can_be_read_again(tmp_path):
    rows = [{k: v for k, v in p.items() if k != "id" or i % 2} for i, p in enumerate(pairs(9))]  # half without ids
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    stream = stream_records(path, FIELDS)
    assert stream.count is None
    first = list(stream)
    assert first == read_records(path, FIELDS) and stream.count == 9
    assert first[0]["id"] == content_id(rows[0]["prompt"], rows[0]["response_a"], rows[0]["response_b"])
    assert list(stream) == first  # a second pass reads the file again
    limited = stream_records(path, FIELDS, limit=4)
    assert list(limited) == first[:4] and limited.count == 4


@pytest.mark.parametrize("rows, message", [
    ([{"id": "a", "prompt": "p", "response_a": "x", "response_b": "y"}] * 2, "record 2: duplicate id 'a'"),
    ([{"prompt": "p", "response_a": "x", "response_b": "y"}] * 2, "record 2 repeats an earlier record word for word"),
    ([{"id": "a", "prompt": "p", "response_a": "x", "response_b": "y"},
      {"id": "b", "prompt": " ", "response_a": "x", "response_b": "y"}], "record 2: field 'prompt' is empty"),
    ([{"id": "a", "prompt": "p", "response_a": "x"}], "lacks column(s) response_b"),
    ([], "holds no records"),
])
def test_record_stream_errors_are_read_records_errors(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(RlaifError, match=message.replace("(", r"\(").replace(")", r"\)")) as streamed:
        list(stream_records(path, FIELDS))
    with pytest.raises(RlaifError) as listed:
        read_records(path, FIELDS)
    assert str(streamed.value) == str(listed.value)


def test_record_stream_finds_a_repeat_far_apart(tmp_path):
    rows = pairs(5000) + [pairs(1)[0]]  # record 5001 repeats record 1's id, past IdSet's first flush
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(RlaifError, match="record 5001: duplicate id 'p000'"):
        list(stream_records(path, FIELDS))


def test_unknown_column_map_field_fails_before_reading(tmp_path):
    with pytest.raises(RlaifError, match=r"unknown field\(s\) respons"):
        stream_records(tmp_path / "not-even-there.jsonl", FIELDS, {"respons": "chosen"})


# -- IdSet ---------------------------------------------------------------------------------------------------------


def test_idset_is_a_set_across_flushes(monkeypatch):
    monkeypatch.setattr(IdSet, "FLUSH", 64)  # many flushes into the sorted buckets
    rng = random.Random(0)
    keys = [f"{rng.getrandbits(40):x}" for _ in range(3000)]
    ids, reference = IdSet(), set()
    for key in keys:
        assert ids.add(key) == (key not in reference)
        reference.add(key)
    assert len(ids) == len(reference)
    assert all(key in ids for key in reference)
    assert not any(f"other-{i}" in ids for i in range(3000))
    assert 7 in IdSet(["7"]) and "7" in IdSet([7])  # keys are their text


def test_idset_digests_never_end_in_a_nul_byte():
    assert all(IdSet.digest(i)[-1] % 2 == 1 for i in range(5000))  # numpy's S12 would drop a trailing NUL


# -- StageRun: counting, streaming, resuming ------------------------------------------------------------------------


def test_stage_run_counts_what_is_left_and_orphans(tmp_path):
    out = tmp_path / "out.jsonl"
    config = {"stage": "test"}
    with StageRun(out, config, "new") as run:
        run.start("model")
        run.write([{"id": "p000"}, {"id": "gone"}])
        run.finish()
    with StageRun(out, config, "resume") as run:
        assert isinstance(run.done, IdSet) and len(run.done) == 2
        records = pairs(3)
        assert run.scan(records) == 2 and run.total == 3 and run.orphans == 1 and not run.idle
        assert [r["id"] for r in run.todo(records)] == ["p001", "p002"]


def test_label_pairs_streams_a_file_and_returns_the_summary(tmp_path, make_fake):
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs(30))
    config = LabelConfig(principles="one", chunk_pairs=4, no_cache=True)
    listed = label_pairs(read_records(path, FIELDS), config, tmp_path / "listed.jsonl", backend=make_fake(FAKE_RULES),
                         progress=False)
    summary = label_pairs(stream_records(path, FIELDS), config, tmp_path / "streamed.jsonl",
                          backend=make_fake(FAKE_RULES), progress=False, return_rows=False)
    assert summary["status"] == "done" and summary["pairs"] == 30 and summary["pairs_in_input"] == 30
    assert summary["labelled_this_run"] == 30 and summary["world_size"] == 1
    assert (tmp_path / "streamed.jsonl").read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                               for r in listed)
    longer = write_jsonl(tmp_path / "more.jsonl", pairs(40))  # ten more pairs: only those are labelled
    fake = make_fake(FAKE_RULES)
    again = label_pairs(stream_records(longer, FIELDS), config, tmp_path / "streamed.jsonl", backend=fake,
                        progress=False, return_rows=False)
    assert again["labelled_this_run"] == 10 and again["pairs"] == 40 and len(fake.contexts) == 10 * 2


def test_label_cli_reads_a_csv_in_batches_keeping_its_ids(tiny_model_dir, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("id,prompt,response_a,response_b\n007,Human: hello,good,bad\n008,Human: bye,yes,no\n")
    out = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(cli, ["label", "--input", str(csv), "--out", str(out), "--model", tiny_model_dir,
                                      "--k", "2", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "2 pairs: A preferred in" in result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["007", "008"]


# -- the merge -----------------------------------------------------------------------------------------------------


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_merge_puts_every_file_back_in_input_order(tmp_path):
    records = [{"id": k} for k in "abcdefg"]
    (tmp_path / "out.jsonl").write_text(lines([{"id": "a", "v": 1}, {"id": "d", "v": 1}]))
    (tmp_path / "s0.jsonl").write_text(lines([{"id": "b", "v": 2}, {"id": "e", "v": 2}, {"id": "g", "v": 2}]))
    (tmp_path / "s1.jsonl").write_text(lines([{"id": "c", "v": 3}, {"id": "d", "v": 3}, {"id": "f", "skipped": "too long"}]))
    sources = [tmp_path / name for name in ("out.jsonl", "s0.jsonl", "s1.jsonl")]
    counts = merge_outputs(tmp_path / "out.jsonl", records, "id", None, sources)
    merged = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in merged] == list("abcdefg")
    assert [r.get("v") for r in merged] == [1, 2, 3, 1, 2, None, 2]  # d from OUT, the first source
    assert counts == {"records": 7, "skipped": 1, "orphans": 0}


def test_merge_of_files_out_of_input_order_keeps_orphans_and_whole_groups(tmp_path):
    records = [{"id": k} for k in ("p1", "p2", "p3")]
    (tmp_path / "a.jsonl").write_text(lines([{"id": "p3-0", "prompt_id": "p3"}, {"id": "old", "prompt_id": "gone"},
                                             {"id": "p1-0", "prompt_id": "p1"}, {"id": "p1-1", "prompt_id": "p1"}]))
    (tmp_path / "b.jsonl").write_text(lines([{"id": "p2-0", "prompt_id": "p2"}]))
    out = tmp_path / "out.jsonl"
    counts = merge_outputs(out, records, "prompt_id", "prompt_id", [tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    merged = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert merged == ["p1-0", "p1-1", "p2-0", "p3-0", "old"]
    assert counts == {"records": 5, "skipped": 0, "orphans": 1}
