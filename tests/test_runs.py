"""The one resumable-run mechanism (rlaif.runs): input-as-output refusal, the lock, resume checks, orphans,
skip rows, de-duplicating readers, and writes that fail on a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.io import RecordWriter


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")

ROOT = Path(__file__).resolve().parents[1]
WORDS = "hello bye yes no good bad ok what two plus four kind honest".split()


def write_pairs(path: Path, n: int = 5, with_ids: bool = True) -> Path:
    rows = [{"prompt": f"Human: what is two plus {i}?", "response_a": " ".join(WORDS[(i + j) % 13] for j in range(20)),
             "response_b": " ".join(WORDS[(3 * i + j) % 13] for j in range(9))} for i in range(n)]
    if with_ids:
        rows = [{"id": f"k{i:02d}", **row} for i, row in enumerate(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


# -- the input is never the output ----------------------------------------------------------------------------------


def _command(name: str, model: str, source: str, out: str) -> list[str]:
    inputs = {"label": "--input", "score": "--input", "generate": "--prompts", "revise": "--prompts"}
    extra = {"generate": ["--max-new-tokens", "2"], "revise": ["--max-new-tokens", "2", "--rounds", "1"]}
    return [name, inputs[name], source, "--out", out, "--model", model, *extra.get(name, [])]


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]], ids=["new", "resume", "overwrite"])
@pytest.mark.parametrize("command", ["label", "score", "generate", "revise"])
def test_the_input_is_refused_as_the_output_in_every_mode(command, mode, tiny_model_dir, tmp_path):
    source = tmp_path / "v.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"hello {i}", "response": "good", "response_a": "yes", "response_b": "no"}
            for i in range(4)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = source.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    hard = tmp_path / "hard.jsonl"
    os.link(source, hard)
    for out in (source, link, hard):  # the same file by its name, through a symlink, through a hard link
        result = CliRunner().invoke(cli, _command(command, tiny_model_dir, str(source), str(out)) + mode)
        assert result.exit_code == 1 and "is the input" in result.output, result.output
    assert source.read_bytes() == before and not meta_path(source).exists()


# -- the lock: two writers ------------------------------------------------------------------------------------------


def test_a_second_writer_gets_one_line_naming_the_first(tiny_model_dir, tmp_path):
    """Real processes: while one `rlaif label` writes OUT, a second (new or --resume) is refused; OUT ends complete."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=40)
    out = tmp_path / "labels.jsonl"
    args = [sys.executable, "-m", "rlaif", "label", "--input", str(pairs), "--out", str(out), "--model",
            tiny_model_dir, "--k", "4", "--chunk-pairs", "1", "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not lock_path(out).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.005)  # the lock is taken before the model loads, and held to the end
        assert first.poll() is None, "the first run ended before a second could start"
        seconds = [subprocess.Popen(args + extra, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True) for extra in ([], ["--resume"])]
        results = [(second.wait(timeout=120), second.stderr.read()) for second in seconds]
        first_still_running = first.poll() is None
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-800:]
    finally:
        for proc in (first, *locals().get("seconds", [])):
            if proc.poll() is None:
                proc.kill()
    assert first_still_running  # the second runs really overlapped the first
    for code, stderr in results:
        errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
        assert code == 1 and "Traceback" not in stderr
        assert len(errors) == 1 and f"is being written by rlaif pid {first.pid}" in errors[0], stderr
    counts = Counter(ids(out))
    assert len(counts) == 40 and set(counts.values()) == {1}  # one complete file, each pair once
    assert json.loads(meta_path(out).read_text())["status"] == "done"
    assert not lock_path(out).exists()  # the lock file goes with its holder


def test_lock_is_released_and_reusable_in_process(tmp_path):
    from rlaif.runs import output_lock  # noqa: PLC0415

    out = tmp_path / "o.jsonl"
    with output_lock(out):
        with pytest.raises(RlaifError, match=f"being written by rlaif pid {os.getpid()}"), output_lock(out):
            pass
    with output_lock(out):  # released: taken again at once
        assert lock_path(out).exists()
    assert not lock_path(out).exists()


# -- resume checks ---------------------------------------------------------------------------------------------------


def test_resume_without_meta_is_refused_and_differing_settings_are_named(make_fake, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "labels.jsonl"
    fake = make_fake([])
    from rlaif.label import LabelConfig, label_pairs  # noqa: PLC0415

    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    label_pairs(rows[:2], LabelConfig(k=4, no_cache=True), out, backend=fake, progress=False)
    with pytest.raises(RlaifError, match=r"made with other settings \(k: 4 then, 1 now\)"):
        label_pairs(rows, LabelConfig(k=1, no_cache=True), out, backend=fake, progress=False)
    meta_path(out).unlink()
    with pytest.raises(RlaifError, match="meta.json is missing"):
        label_pairs(rows, LabelConfig(k=4, no_cache=True), out, backend=fake, progress=False)
    assert len(ids(out)) == 2  # nothing was mixed in


def test_orphan_labels_of_an_edited_idless_input_are_reported(make_fake, tmp_path, caplog):
    from rlaif.label import LabelConfig, label_pairs  # noqa: PLC0415

    pairs = write_pairs(tmp_path / "pairs.jsonl", with_ids=False)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    out = tmp_path / "labels.jsonl"
    label_pairs(rows, LabelConfig(k=1, no_cache=True), out, backend=make_fake([]), progress=False)
    rows[2]["response_b"] += " edited"  # its content id changes: its old label is an orphan
    label_pairs(rows, LabelConfig(k=1, no_cache=True), out, backend=make_fake([]), progress=False)
    assert len(ids(out)) == 6
    assert json.loads(meta_path(out).read_text())["orphans"] == 1
    assert "1 record(s) whose id is not in this input" in caplog.text


def test_digest_ignores_settings_added_later_at_their_old_behaviour():
    from rlaif.label import LabelConfig  # noqa: PLC0415
    from rlaif.runs import config_digest  # noqa: PLC0415

    assert config_digest(LabelConfig()) == config_digest({k: v for k, v in vars(LabelConfig()).items()
                                                          if k not in ("max_prompt_tokens", "on_too_long")})
    assert config_digest(LabelConfig(max_prompt_tokens=100)) != config_digest(LabelConfig())
    assert config_digest(LabelConfig(on_too_long="error")) == config_digest(LabelConfig())  # how, not what


# -- skip rows and readers -------------------------------------------------------------------------------------------


def test_run_chunks_writes_skip_rows_and_readers_leave_them_and_repeats_out(tmp_path):
    from rlaif.runs import Run, run_chunks, usable_rows  # noqa: PLC0415

    out = tmp_path / "o.jsonl"
    records = [{"id": f"r{i}", "x": i} for i in range(5)]
    with Run(out, {"a": 1}, "new") as run:
        run.start("m")
        run_chunks(run, list(run.todo(records)), lambda part: [{**r, "y": 2 * r["x"]} for r in part], 2,
                   skip={"r1": "too long: 9 tokens > limit 8"})
        meta = run.finish()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"id": "r1", "skipped": "too long: 9 tokens > limit 8"} in rows and meta["skipped_too_long"] == 1
    kept, counts = usable_rows([*rows, rows[0]], out)
    assert [r["id"] for r in kept] == ["r0", "r2", "r3", "r4"] and counts == {"skipped": 1, "duplicates": 1}
    with Run(out, {"a": 1}, "resume") as run:  # the skipped record counts as done: not redone
        assert list(run.todo(records)) == [] and run.skipped == 1


def test_a_full_disk_is_one_line_and_keeps_every_finished_record(monkeypatch, tmp_path):
    from rlaif.runs import Run, run_chunks  # noqa: PLC0415

    """The write of the third chunk fails half-way (ENOSPC): the file is cut back to the two finished chunks."""
    out = tmp_path / "o.jsonl"
    real = RecordWriter.write_all
    calls = []

    def fill_up(self, rows):
        calls.append(1)
        if len(calls) == 3:
            self._handle.write('{"id": "r4", "x"')  # a torn record reaches the disk, then the disk is full
            self._handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    monkeypatch.setattr(RecordWriter, "write_all", fill_up)
    records = [{"id": f"r{i}"} for i in range(8)]
    with pytest.raises(RlaifError, match=f"Cannot write {out}: the disk is full .* 4 finished records are kept"):
        with Run(out, {"a": 1}, "new") as run:
            run.start("m")
            run_chunks(run, list(run.todo(records)), lambda part: part, 2)
    assert ids(out) == ["r0", "r1", "r2", "r3"]  # whole records only
    assert json.loads(meta_path(out).read_text())["status"] == "failed"
    monkeypatch.setattr(RecordWriter, "write_all", real)
    with Run(out, {"a": 1}, "resume") as run:
        run.start("m")
        run_chunks(run, list(run.todo(records)), lambda part: part, 2)
        run.finish()
    assert ids(out) == [f"r{i}" for i in range(8)]


def test_cli_full_disk_is_one_line(monkeypatch, tiny_model_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "labels.jsonl"
    real = RecordWriter.write_all

    def full(self, rows):
        if self.path.stat().st_size:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, rows)

    monkeypatch.setattr(RecordWriter, "write_all", full)
    args = ["label", "--input", str(pairs), "--out", str(out), "--model", tiny_model_dir, "--k", "1",
            "--chunk-pairs", "2", "--no-cache"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "the disk is full" in result.output and str(out) in result.output and "--resume" in result.output
    assert len(ids(out)) == 2


def test_resume_with_another_model_is_refused(make_fake, tmp_path):
    from rlaif.label import LabelConfig, label_pairs  # noqa: PLC0415

    rows = [json.loads(line) for line in write_pairs(tmp_path / "pairs.jsonl").read_text().splitlines()]
    out = tmp_path / "labels.jsonl"
    label_pairs(rows[:2], LabelConfig(k=1, no_cache=True), out, backend=make_fake([], model_id="m@1"), progress=False)
    with pytest.raises(RlaifError, match="made by model m@1, but --model now resolves to m@2"):
        label_pairs(rows, LabelConfig(k=1, no_cache=True), out, backend=make_fake([], model_id="m@2"), progress=False)
    assert len(ids(out)) == 2


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "interrupted"), (RuntimeError, "failed")])
def test_the_meta_says_how_a_run_ended(error, status, tmp_path):
    from rlaif.runs import Run  # noqa: PLC0415

    out = tmp_path / "o.jsonl"
    with pytest.raises(error), Run(out, {"a": 1}, "new") as run:
        run.start("m")
        assert json.loads(meta_path(out).read_text())["status"] == "running"
        run.write([{"id": "r0"}])
        raise error
    assert json.loads(meta_path(out).read_text())["status"] == status and ids(out) == ["r0"]


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    from rlaif.runs import refuse_input_as_output  # noqa: PLC0415

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    with pytest.raises(RlaifError, match="is the input"):
        refuse_input_as_output(dataset / "labels.jsonl", [dataset])
    with pytest.raises(RlaifError, match="meta or lock file"):
        refuse_input_as_output(tmp_path / "x.jsonl", [tmp_path / "x.jsonl.meta.json"])
    refuse_input_as_output(tmp_path / "labels.jsonl", [dataset])  # beside it is fine
