"""The back-end layer: spec -> back end, back-end options, a third-party plug-in, the cache wrapper."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from rlaif.backends import (
    GenerationSettings,
    check_options,
    load_backend,
    parse_option_items,
    parse_options,
    resolve_spec,
)
from rlaif.backends.cached import CachedBackend, open_backend
from rlaif.backends.hf.factory import HFOptions
from rlaif.cache import NullCache, ResultCache
from rlaif.cli import cli
from rlaif.errors import RlaifError


def test_specs_pick_their_back_end(tiny_model_dir):
    assert resolve_spec("default")[0].name == "hf"
    assert resolve_spec(tiny_model_dir)[0].name == "hf"
    assert resolve_spec("org/some-model")[0].name == "hf"
    assert resolve_spec("http://127.0.0.1:8000/v1")[0].name == "server"
    assert resolve_spec("https://judge.example/v1")[0].name == "server"
    factory, rest = resolve_spec(f"hf:{tiny_model_dir}")
    assert factory.name == "hf" and rest == tiny_model_dir
    with pytest.raises(RlaifError, match="--model is empty"):
        resolve_spec("  ")


def test_option_items_and_coercion():
    assert parse_option_items(["dtype=bfloat16", "batch-tokens=64"]) == {"dtype": "bfloat16", "batch_tokens": "64"}
    assert parse_option_items({"batch-tokens": 64}) == {"batch_tokens": 64}
    assert parse_option_items(["urls=a", "urls=b"]) == {"urls": ["a", "b"]}  # a repeated key collects
    options = parse_options(HFOptions, {"batch_tokens": "64", "share_prefix": "no", "threads": "none"}, "hf")
    assert (options.batch_tokens, options.share_prefix, options.threads) == (64, False, None)
    with pytest.raises(RlaifError, match="must be a whole number"):
        parse_options(HFOptions, {"batch_tokens": "lots"}, "hf")
    with pytest.raises(RlaifError, match="no option 'batch_token'. Did you mean batch_tokens"):
        parse_options(HFOptions, {"batch_token": "1"}, "hf")
    with pytest.raises(RlaifError, match="dtype must be one of"):
        parse_options(HFOptions, {"dtype": "int3"}, "hf")
    with pytest.raises(RlaifError, match="KEY=VALUE"):
        parse_option_items(["dtype"])


def test_options_are_checked_before_any_model_loads(tiny_model_dir):
    check_options(tiny_model_dir, ["batch_tokens=128"])
    with pytest.raises(RlaifError, match="hf back end has no option 'concurrency'"):
        check_options("default", ["concurrency=4"])


def test_backend_option_reaches_the_hf_backend(tiny_model_dir):
    backend = load_backend(tiny_model_dir, ["batch_tokens=96", "share_prefix=false"])
    assert backend.batch_tokens == 96 and backend.share_prefix is False
    assert backend.context_length == 4096


def test_cli_backend_option_errors_are_one_line(tmp_path, tiny_model_dir):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "hello", "response_a": "good", "response_b": "bad"}\n')
    result = CliRunner().invoke(cli, ["label", "--input", str(pairs), "--out", str(tmp_path / "o.jsonl"),
                                      "--model", tiny_model_dir, "--backend-option", "dtype=int3"])
    assert result.exit_code == 1 and "dtype must be one of" in result.output and "Traceback" not in result.output
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\nbackend_options:\n  batch_tokens: many\n")
    result = CliRunner().invoke(cli, ["label", "--config", str(config), "--input", str(pairs),
                                      "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "batch_tokens='many' must be a whole number" in result.output


PLUGIN = '''
from dataclasses import dataclass


@dataclass
class EchoOptions:
    suffix: str = "!"


class EchoBackend:
    context_length = None

    def __init__(self, spec, options, tokenizer):
        self.model_id = "echo:" + spec
        self.tokenizer = tokenizer
        self.suffix = options.suffix

    def token_logprobs(self, requests):
        return [[-1.0 for _ in r.reads] for r in requests]

    def generate(self, prompts, settings):
        return [p + self.suffix for p in prompts]


class EchoFactory:
    name = "echo"
    options_class = EchoOptions
    tokenizer = None

    def accepts(self, spec):
        return spec.startswith("echo://")

    def load(self, spec, options):
        return EchoBackend(spec, options, self.tokenizer)
'''


@pytest.fixture
def echo_plugin(tmp_path, monkeypatch):
    """A third-party package registering back end `echo` through the `rlaif.backends` entry-point group."""
    (tmp_path / "rlaif_echo.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "rlaif_echo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlaif-echo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[rlaif.backends]\necho = rlaif_echo:EchoFactory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("rlaif_echo", None)


def test_a_third_party_backend_plugs_in_through_its_entry_point(echo_plugin, tiny_tokenizer):
    factory, rest = resolve_spec("echo://anything")
    assert factory.name == "echo" and rest == "echo://anything"
    factory.tokenizer = tiny_tokenizer
    backend = load_backend("echo:judge", ["suffix=?"])
    assert backend.model_id == "echo:judge"
    assert backend.generate(["hi"], [GenerationSettings()]) == ["hi?"]
    with pytest.raises(RlaifError, match="echo back end has no option 'dtype'"):
        load_backend("echo:judge", ["dtype=float32"])


def test_cached_backend_keys_by_model_id_and_request(make_fake, tmp_path):
    from rlaif.backends import TokenRequest

    cache_file = tmp_path / "r.sqlite"
    fake = make_fake([("hello", {"A": 0.5})])
    wrapped = CachedBackend(fake, ResultCache(cache_file))
    request = TokenRequest((1, 2, 3), ((2, 3),))
    first = wrapped.token_logprobs([request, request])
    assert first[0] == first[1] and fake.calls == 1 and len(fake.contexts) == 1  # the same request runs once
    again = CachedBackend(make_fake([]), ResultCache(cache_file))
    assert again.token_logprobs([request]) == [first[0]] and again.backend.calls == 0
    other_model = CachedBackend(make_fake([], model_id="another"), ResultCache(cache_file))
    other_model.token_logprobs([request])
    assert other_model.backend.calls == 1
    assert CachedBackend(fake, NullCache()).model_id == "fake-model"


def test_open_backend_wraps_a_given_backend(make_fake, tmp_path):
    fake = make_fake([])
    backend = open_backend("ignored", None, str(tmp_path), False, backend=fake)
    assert backend.backend is fake and isinstance(backend.cache, ResultCache)
    assert (tmp_path / "results.sqlite").exists()


@dataclass
class _Typed:
    flag: bool = False
    names: tuple[str, ...] = ()
    ratio: float = 1.0


def test_coercion_of_tuples_floats_and_bools():
    parsed = parse_options(_Typed, {"flag": "true", "names": "a, b", "ratio": "0.5"}, "x")
    assert parsed == _Typed(True, ("a", "b"), 0.5)
    assert parse_options(_Typed, {"names": ["u1", "u2"]}, "x").names == ("u1", "u2")
    with pytest.raises(RlaifError, match="must be true or false"):
        parse_options(_Typed, {"flag": "maybe"}, "x")
