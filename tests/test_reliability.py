"""Nothing lost, nobody in: the template sandbox, prompts too long for the model, cache faults, killed
conversions, train-rm killed while saving a checkpoint, and the messages of issue 13."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.errors import RlaifError
from rlaif.label import LabelConfig, label_pairs

ROOT = Path(__file__).resolve().parents[1]
WORDS = "hello bye yes no good bad ok what two plus four kind honest".split()
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1"}


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pair(i: int, response_a: str | None = None) -> dict:
    return {"id": f"p{i}", "prompt": f"Human: what is two plus {i}?",
            "response_a": response_a or " ".join(WORDS[(i + j) % 13] for j in range(12)), "response_b": "no"}


# -- the template sandbox ---------------------------------------------------------------------------------------


def test_a_suffixless_path_is_a_user_template_and_a_bare_name_only_a_builtin(tmp_path, monkeypatch):
    from rlaif.templates import load_template, template_path  # noqa: PLC0415

    evil = tmp_path / "cai_choice"  # named like a built-in, without .j2
    evil.write_text('{{ cycler.__init__.__globals__.os.system("touch ' + str(tmp_path / "pwned") + '") }}')
    path, builtin = template_path(str(evil))
    assert path == evil and not builtin
    with pytest.raises(RlaifError, match="stopped by the sandbox"):
        load_template(str(evil), answers=False).render()
    assert not (tmp_path / "pwned").exists()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cai-choice").write_text("{{ 1 }}")
    path, builtin = template_path("cai-choice")  # a bare name never picks up a file of the working directory
    assert builtin and path.parent.name == "templates"


HOSTILE = {
    "huge range": "{{ range(10**7)|list }}",
    "silent nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "doubling with +": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s }}",
    "a list of big strings joined": "{% set s = 'x' * 3000000 %}{{ ([s] * 1000)|join }}",
    "a literal list joined": "{% set s = 'x' * 3000000 %}{{ [s, s, s, s, s]|join }}",
    "center filter": "{{ 'x'|center(10**9) }}",
    "center method": "{{ 'x'.center(10**9) }}",
    "indent of many lines": "{% set s = '\\n' * 3000000 %}{{ s|indent(1000) }}",
    "replace with itself": "{% set s = 'x' * 3000000 %}{{ s.replace('x', s) }}",
    "wordwrap": "{% set s = 'x' * 3000000 %}{{ s|wordwrap(1, wrapstring=s) }}",
    "%-format width": "{{ '%0999999999d' % 1 }}",
    "%-format star width": "{{ '%*d' % (999999999, 1) }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "str.format nested width": "{{ '{:>{}}'.format(1, 999999999) }}",
    "format filter width": "{{ '%0999999999d'|format(1) }}",
    "tower of powers": "{{ (((10**64)**64)**64)**64 }}",
    "endless recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "recursion doubling": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "mutating a list": "{% set l = [] %}{{ l.append(1) }}",
    "lipsum": "{{ lipsum(10**6) }}",
    "include": "{% include '/etc/passwd' %}",
    "division by zero": "{{ 1 / 0 }}",
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_resource_hungry_templates_are_one_line_errors_fast(source, tmp_path):
    from rlaif.templates import load_template  # noqa: PLC0415

    path = tmp_path / "t.j2"
    path.write_text(source)
    started = time.monotonic()
    with pytest.raises(RlaifError, match=r"^Template .*(sandbox|failed to render|unknown variable)"):
        load_template(path, answers=False).render(conversation="c")
    assert time.monotonic() - started < 5


def test_what_templates_need_still_renders(tmp_path):
    from rlaif.templates import load_template  # noqa: PLC0415

    path = tmp_path / "ok.j2"
    path.write_text("{% for ex in few_shot %}[{{ loop.index }}:{{ ex.q|trim }}]{% endfor %}{{ conversation ~ '!' }} "
                    "{{ '%5d'|format(42) }}|{{ 'ab'|center(6) }}|{{ ['x', 'y']|join(',') }}|{{ 2 ** 10 }}|"
                    "{{ '{:>3}'.format('a') }}|{{ 12345678 }}|{{ response.replace('o', '0') }}")
    text = load_template(path, answers=False).render(few_shot=[{"q": " one "}, {"q": "two"}], conversation="Human: hi",
                                                      response="foo")
    assert text == "[1:one][2:two]Human: hi!    42|  ab  |x,y|1024|  a|12345678|f00"


# -- prompts too long for the model -----------------------------------------------------------------------------


class _NoEncode:
    """A tokenizer that must not be asked to encode: the character bound alone decides."""

    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "abcd": 1}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise AssertionError("a text that is too long by its characters was tokenised")


def test_the_character_bound_skips_huge_texts_without_tokenising():
    from rlaif.limits import LengthLimit  # noqa: PLC0415

    limit = LengthLimit(_NoEncode(), context_length=100, reserve=2)
    assert limit.limit == 98 and limit.chars_per_token == 4
    assert limit.too_long(["x" * 393], lambda: pytest.fail("rendered")) == "too long: over 98 tokens > limit 98"
    assert "2000001 characters" in limit.too_long(["x" * 2_000_001], lambda: [])  # whatever the limit
    blank = LengthLimit(_NoEncode(), None, max_prompt_tokens=10)
    with pytest.raises(AssertionError, match="tokenised"):  # blanks are not counted: it must tokenise this one
        blank.too_long([" " * 500 + "x"], lambda: ["x"])


def test_label_skips_too_long_pairs_with_a_reason_and_never_shows_them_to_the_model(make_fake, tmp_path):
    long = pair(1, " ".join(["honest"] * 150))  # the other pairs' prompts are at most 101 tokens
    pairs = [pair(0), long, pair(2)]
    fake = make_fake([])
    out = tmp_path / "labels.jsonl"
    rows = label_pairs(pairs, LabelConfig(k=1, no_cache=True, max_prompt_tokens=200), out, backend=fake, progress=False)
    by_id = {row["id"]: row for row in rows}
    skipped = by_id["p1"]
    assert set(skipped) == {"id", "skipped"} and skipped["skipped"].startswith("too long: ")
    tokens = int(skipped["skipped"].split()[2])
    assert tokens > 200 and skipped["skipped"].endswith("> limit 200")
    assert 0 < by_id["p0"]["p_a"] < 1 and 0 < by_id["p2"]["p_a"] < 1
    assert not any("honest honest honest" in context for context in fake.contexts)
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    assert meta["skipped_too_long"] == 1 and meta["labelled_this_run"] == 2 and meta["prompt_token_limit"] == 200
    with pytest.raises(RlaifError, match="1 pair\\(s\\) are too long for the model, e.g. pair 'p1'"):
        label_pairs(pairs, LabelConfig(k=1, no_cache=True, max_prompt_tokens=200, on_too_long="error"),
                    tmp_path / "e.jsonl", backend=(strict := make_fake([])), progress=False)
    assert strict.calls == 0  # refused before any model work


def test_every_stage_skips_and_every_reader_leaves_skip_rows_out(make_fake, tmp_path, caplog):
    from rlaif.drlaif import ScoreConfig, score_records  # noqa: PLC0415
    from rlaif.generate import GenerateConfig, generate_pairs  # noqa: PLC0415
    from rlaif.revise import ReviseConfig, export_chains, revise_prompts  # noqa: PLC0415
    from rlaif.rm.data import load_preferences  # noqa: PLC0415

    long_prompt = "Human: " + " ".join(["kind"] * 300)
    scores = score_records([{"id": "s0", "prompt": "hi", "response": "good"},
                            {"id": "s1", "prompt": long_prompt, "response": "good"}],
                           ScoreConfig(no_cache=True, max_prompt_tokens=200), tmp_path / "s.jsonl",
                           backend=make_fake([]), progress=False)
    assert "skipped" in scores[1] and "score" in scores[0]
    counter = iter(range(10**6))
    summary = generate_pairs([{"id": "g0", "prompt": "hello"}, {"id": "g1", "prompt": long_prompt}],
                             GenerateConfig(no_cache=True, max_prompt_tokens=200), tmp_path / "g.jsonl",
                             backend=make_fake([], rationale=lambda p: f"answer {next(counter)}"), progress=False)
    generated = rows_of(tmp_path / "g.jsonl")
    assert {"id": "g1", "prompt_id": "g1", "skipped": generated[-1]["skipped"]} == generated[-1]
    assert summary["skipped_this_run"] == 1 and summary["pairs_in_file"] == 1
    revise_prompts([{"id": "r0", "prompt": "hello"}, {"id": "r1", "prompt": long_prompt}],
                   ReviseConfig(no_cache=True, rounds=1, max_new_tokens=4, max_prompt_tokens=200),
                   tmp_path / "c.jsonl", backend=make_fake([], rationale="fine"), progress=False)
    assert [row.get("skipped", "")[:9] for row in rows_of(tmp_path / "c.jsonl")] == ["", "too long:"]
    assert export_chains(tmp_path / "c.jsonl", ["sft"])["sft"]["records"] == 1
    labels = label_pairs(rows_of(tmp_path / "g.jsonl")[:1], LabelConfig(k=1, no_cache=True), tmp_path / "l.jsonl",
                         backend=make_fake([]), progress=False)
    jsonl(tmp_path / "l.jsonl", [*labels, {"id": "x", "skipped": "too long: 9 tokens > limit 8"}, labels[0]])
    data = load_preferences(tmp_path / "l.jsonl")
    assert len(data.pairs) == 1 and data.left_out == {"skipped": 1, "duplicates": 1}
    assert "left out 1 record(s) whose id repeats" in caplog.text


def test_align_report_counts_labels_skipped_as_too_long(tmp_path):
    humans = jsonl(tmp_path / "h.jsonl", [{"id": f"h{i}", "prompt": "p", "chosen": f"good {i}", "rejected": "bad"}
                                          for i in range(3)])
    labels = [{"id": "h0", "prompt": "p", "response_a": "good 0", "response_b": "bad", "p_a": 0.9, "p_a_ab": 0.9,
               "p_a_ba": 0.9}, {"id": "h1", "skipped": "too long: 99 tokens > limit 8"}]
    jsonl(tmp_path / "l.jsonl", [labels[0], labels[1], labels[0]])
    result = CliRunner().invoke(cli, ["align", "--human", str(humans), "--labels", str(tmp_path / "l.jsonl"),
                                      "--out", str(tmp_path / "rep"), "--no-plots", "--n-boot", "10"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["n_scored"] == 1
    assert report["skipped"]["prompt too long for the labeller"] == 1
    assert report["skipped"]["label id repeated (the first kept)"] == 1


BOUND_MB = 1000  # a label run on the tiny model peaks near 420 MB; scoring the 200k-character record would not fit


def _peak_rss_mb(args: list[str], kill_above_mb: int, timeout: float = 180) -> tuple[int, float]:
    """Run a command; return (exit status, its peak RSS in MB). A watchdog kills it above `kill_above_mb`."""
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def watch() -> None:
        deadline = time.time() + timeout
        while not stop.wait(0.02):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                line = next((line for line in status.splitlines() if line.startswith("VmRSS")), "VmRSS: 0 kB")
                if int(line.split()[1]) // 1024 > kill_above_mb or time.time() > deadline:
                    os.kill(proc.pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    return proc.returncode, usage.ru_maxrss / 1024


def test_a_200k_character_record_is_skipped_with_bounded_memory(tiny_model_dir, tmp_path):
    huge = ("honest kind good bad " * 10_000)[:200_000]
    pairs = jsonl(tmp_path / "pairs.jsonl", [pair(0), pair(1, huge), pair(2)])
    out = tmp_path / "labels.jsonl"
    args = [sys.executable, "-m", "rlaif", "label", "--input", str(pairs), "--out", str(out), "--model",
            tiny_model_dir, "--k", "2", "--no-cache"]
    code, peak = _peak_rss_mb(args, kill_above_mb=2 * BOUND_MB)
    assert code == 0 and peak < BOUND_MB, f"exit {code}, peak RSS {peak:.0f} MB"
    rows = {row["id"]: row for row in rows_of(out)}
    assert rows["p1"]["skipped"].startswith("too long: over ") and rows["p1"]["skipped"].endswith("> limit 4095")
    assert "p_a" in rows["p0"] and "p_a" in rows["p2"]
    code, peak = _peak_rss_mb([*args, "--out", str(tmp_path / "e.jsonl"), "--on-too-long", "error"], 2 * BOUND_MB)
    assert code == 1 and peak < BOUND_MB and not (tmp_path / "e.jsonl").exists()


# -- the raw-result cache ---------------------------------------------------------------------------------------


def _label_twice(make_fake, cache: Path, out: Path) -> tuple[object, object]:
    """Label two pairs into a cache, then again (overwrite) with a fresh fake: returns both fakes."""
    first, second = make_fake([]), make_fake([])
    config = LabelConfig(k=1, cache_dir=str(cache))
    label_pairs([pair(0), pair(1)], config, out, backend=first, progress=False)
    label_pairs([pair(0), pair(1)], config, out, overwrite=True, backend=second, progress=False)
    return first, second


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_cache_is_set_aside_and_the_run_goes_on(damage, make_fake, tmp_path, caplog):
    cache = tmp_path / "cache"
    _label_twice(make_fake, cache, tmp_path / "warm.jsonl")
    db = cache / "results.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # grow it, so truncating cuts real content
        conn.executemany("INSERT INTO results VALUES (?, ?, ?)", [(f"filler{i}", "x" * 2000, 0.0) for i in range(200)])
    gc.collect()  # the warm-up's connections close: the cache is one file, as a finished run leaves it
    assert not (cache / "results.sqlite-wal").exists()
    data = db.read_bytes()
    db.write_bytes(b"not a database" * 100 if damage == "garbage" else data[: len(data) // 2])
    first, second = _label_twice(make_fake, cache, tmp_path / "labels.jsonl")
    assert first.calls > 0 and second.calls == 0  # the fresh cache works: the rerun is served from it
    assert len(list(cache.glob("results.sqlite.corrupt-*"))) == 1
    assert "was corrupt" in caplog.text and len(rows_of(tmp_path / "labels.jsonl")) == 2


@contextlib.contextmanager
def read_only(folder: Path):
    """Make `folder` read-only for this process: chmod, or (as root, who ignores modes) a read-only bind mount."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only folder here (root, and no bind mount)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_cache_is_read_without_writing(make_fake, tmp_path, caplog):
    cache = tmp_path / "cache"
    _label_twice(make_fake, cache, tmp_path / "warm.jsonl")
    gc.collect()  # as a finished run leaves it: one file, no WAL
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    with read_only(cache):
        with pytest.raises(OSError):
            (cache / "probe").write_text("x")  # really read-only
        fake = make_fake([])
        label_pairs([pair(0), pair(1), pair(2)], LabelConfig(k=1, cache_dir=str(cache)), tmp_path / "l.jsonl",
                    backend=fake, progress=False)
    assert "read-only: reading it" in caplog.text
    assert len(fake.contexts) == 2  # pairs 0 and 1 came from the cache: only pair 2's two prompts ran
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before


def test_a_full_cache_disk_is_one_line_naming_the_path(make_fake, tmp_path, monkeypatch):
    import rlaif.cache as cache_module  # noqa: PLC0415

    class FullDisk:
        def __init__(self, conn):
            self.conn = conn

        def __getattr__(self, name):
            return getattr(self.conn, name)

        def __enter__(self):
            return self.conn.__enter__()

        def __exit__(self, *exc):
            return self.conn.__exit__(*exc)

        def executemany(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

    connect = sqlite3.connect
    monkeypatch.setattr(cache_module.sqlite3, "connect", lambda *a, **k: FullDisk(connect(*a, **k)))
    cache = tmp_path / "cache"
    result_path = cache / "results.sqlite"
    with pytest.raises(RlaifError, match=f"Cannot write the raw-result cache {result_path}: the disk is full"):
        label_pairs([pair(0)], LabelConfig(k=1, cache_dir=str(cache)), tmp_path / "l.jsonl",
                    backend=make_fake([]), progress=False)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_really_full_disk_keeps_whole_records(tiny_model_dir, tmp_path):
    pairs = jsonl(tmp_path / "pairs.jsonl", [pair(i, " ".join(WORDS * 30)) for i in range(60)])
    with small_tmpfs(tmp_path / "small", "96k") as disk:
        out = disk / "labels.jsonl"
        args = ["label", "--input", str(pairs), "--out", str(out), "--model", tiny_model_dir, "--k", "1",
                "--chunk-pairs", "1", "--cache-dir", str(disk / "cache")]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "the disk is full" in errors[0] and str(disk) in errors[0]
        text = out.read_text() if out.exists() else ""
        assert text.endswith("\n") or not text
        assert all(json.loads(line)["id"] for line in text.splitlines())  # every line a whole record


# -- the default model's conversion leftovers -------------------------------------------------------------------


def test_killed_conversions_are_cleaned_up_under_the_lock(tmp_path, monkeypatch):
    from rlaif.backends.hf import default  # noqa: PLC0415

    monkeypatch.setenv("RLAIF_CACHE_DIR", str(tmp_path))
    models = tmp_path / "models"
    models.mkdir()
    for name in ("convert-a1b2", "convert-c3d4"):
        (models / name).mkdir()
        (models / name / "model.gguf").write_bytes(b"0" * 4096)
    seen = []

    def convert(package, target):
        seen.append(sorted(p.name for p in models.glob("convert-*")))
        target.mkdir()
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(default, "_convert", convert)
    target = default.default_model_dir()
    assert seen == [[]] and (target / "config.json").exists()  # cleaned before converting
    (models / "convert-e5f6").mkdir()  # a later killed conversion, with the model already converted
    assert default.default_model_dir() == target and not list(models.glob("convert-*"))


# -- train-rm killed while it saves a checkpoint ----------------------------------------------------------------

KILLER = """
import os, signal, sys
from transformers import Trainer
original = Trainer._save_rng_state
def dying(self, output_dir):
    if output_dir.endswith("checkpoint-{step}"):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-save: weights and optimizer written, RNG and state not
    return original(self, output_dir)
Trainer._save_rng_state = dying
from rlaif.cli import cli
cli(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def rm_setup(tmp_path_factory, save_model):
    folder = tmp_path_factory.mktemp("rm-resume")
    base = save_model(folder / "base")
    probs = [0.9, 0.8, 0.3, 1.0, 0.7, 0.1, 0.6, 0.2, 0.95, 0.4, 0.85, 0.15]
    labels = jsonl(folder / "labels.jsonl", [{"id": f"x{i}", "prompt": f"what is two plus {i % 10}",
                                               "response_a": "four good", "response_b": "bad no", "p_a": p}
                                              for i, p in enumerate(probs)])
    args = ["train-rm", "--labels", str(labels), "--base-model", str(base), "--eval-split", "0", "--max-steps", "6",
            "--save-steps", "2", "--batch-size", "2", "--logging-steps", "1", "--max-length", "32",
            "--learning-rate", "0.01"]
    result = CliRunner().invoke(cli, [*args, "--out", str(folder / "full")])
    assert result.exit_code == 0, result.output
    return args, json.loads((folder / "full" / "metrics.json").read_text())["train"]


@pytest.mark.parametrize("kill_at", [2, 4], ids=["first-save", "second-save"])
def test_train_rm_killed_during_a_checkpoint_save_resumes_with_whole_run_metrics(kill_at, rm_setup, tmp_path):
    args, full = rm_setup
    out = tmp_path / "rm"
    killed = subprocess.run([sys.executable, "-c", KILLER.replace("{step}", str(kill_at)), *args, "--out", str(out)],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-1000:]
    assert (out / f"checkpoint-{kill_at}").is_dir() and not (out / f"checkpoint-{kill_at}" / "trainer_state.json").exists()
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert f"Deleted incomplete checkpoint-{kill_at}" in result.output
    resumed = json.loads((out / "metrics.json").read_text())["train"]
    assert resumed["resumed_from_step"] == kill_at - 2 and resumed["steps_this_run"] == 8 - kill_at
    assert resumed["global_step"] == full["global_step"] == 6
    assert resumed["num_tokens"] == full["num_tokens"] > 0  # every step's tokens, not only the resumed ones
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    losses = [row["loss"] for row in resumed["log_history"] if "loss" in row]
    assert losses == pytest.approx([row["loss"] for row in full["log_history"] if "loss" in row], abs=1e-5)


def test_train_rm_resume_with_other_settings_is_refused_naming_them(rm_setup, tmp_path):
    args, _ = rm_setup
    out = tmp_path / "rm"
    short = [*args, "--out", str(out), "--max-steps", "2"]  # the later --max-steps wins
    assert CliRunner().invoke(cli, short).exit_code == 0
    assert (out / "checkpoint-2").is_dir()
    refused = CliRunner().invoke(cli, [*short, "--resume", "--learning-rate", "0.02"])
    assert refused.exit_code == 1
    error = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "learning_rate: 0.01 then, 0.02 now" in error[0] and "--overwrite" in error[0]
    assert (out / "checkpoint-2" / "trainer_state.json").exists()  # nothing lost
    labels = Path(args[args.index("--labels") + 1])
    changed = tmp_path / "labels.jsonl"
    changed.write_text(labels.read_text().replace('"p_a": 0.9', '"p_a": 0.1'))
    other_data = CliRunner().invoke(cli, [*short, "--resume", "--labels", str(changed)])
    assert other_data.exit_code == 1 and "labels_sha256" in other_data.output
    moved = tmp_path / "same.jsonl"
    moved.write_text(labels.read_text())
    again = CliRunner().invoke(cli, [*short, "--resume", "--labels", str(moved), "--logging-steps", "2"])
    assert again.exit_code == 0, again.output  # the same data elsewhere, another log interval: a resume


# -- messages -------------------------------------------------------------------------------------------------------


def test_no_cache_rerun_does_not_claim_the_cache(tiny_model_dir, tmp_path):
    pairs = jsonl(tmp_path / "pairs.jsonl", [pair(0), pair(1)])
    base = ["label", "--input", str(pairs), "--out", str(tmp_path / "l.jsonl"), "--model", tiny_model_dir, "--k", "1",
            "--cache-dir", str(tmp_path / "cache")]
    uncached = CliRunner().invoke(cli, [*base, "--no-cache"])  # two tiny pairs: labelled in well under 0.5 s
    assert uncached.exit_code == 0 and "Labelled 2 pairs" in uncached.output
    assert "from the cache" not in uncached.output
    cached = CliRunner().invoke(cli, [*base, "--overwrite"])
    assert "from the cache" not in cached.output  # the cache was empty: nothing came from it
    cached = CliRunner().invoke(cli, [*base, "--overwrite"])
    assert "(raw results from the cache)" in cached.output
    rerun = CliRunner().invoke(cli, [*base, "--resume", "--no-cache"])
    assert rerun.exit_code == 0 and "from the cache" not in rerun.output
    assert "All 2 pairs were labelled already" in rerun.output


def test_prefix_sharing_uses_the_current_cache_argument(tiny_model_dir):
    from rlaif.backends.hf import HFBackend  # noqa: PLC0415
    from rlaif.label import Labeller  # noqa: PLC0415

    backend = HFBackend.load(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Labeller(LabelConfig(model=tiny_model_dir, k=3, no_cache=True), backend).label([pair(0)])
    assert backend.share_prefix and backend.stats.forwards > 1
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_errno_of_a_failed_write_is_named():
    from rlaif.runs import write_failure  # noqa: PLC0415

    full = write_failure(Path("/x/o.jsonl"), OSError(errno.ENOSPC, "No space left on device"), "Kept.")
    assert str(full).startswith("Cannot write /x/o.jsonl: the disk is full") and "--resume" in str(full)
    denied = write_failure(Path("/x/o.jsonl"), OSError(errno.EACCES, "Permission denied"), "Kept.")
    assert str(denied).startswith("Cannot write /x/o.jsonl: Permission denied")
