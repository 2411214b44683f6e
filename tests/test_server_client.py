"""The server back end's plumbing: options, request planning, sticky routing over several servers, failover."""

from __future__ import annotations

import logging

import pytest

from rlaif.backends import TokenRequest, load_backend, parse_option_items, parse_options
from rlaif.backends.server import ServerOptions, server_urls
from rlaif.backends.server.backend import GROUP_MIN_SHARED, plan, route_key
from rlaif.errors import RlaifError
from server_fakes import FakeVLLM


def options(*items: str) -> ServerOptions:
    return parse_options(ServerOptions, parse_option_items(list(items)), "server")


def test_options_from_flags():
    parsed = options("concurrency=4", "timeout=2.5", "urls=http://b:2/v1,http://c:3", "tokenizer=server",
                     "dialect=llamacpp", "model_name=none")
    assert (parsed.concurrency, parsed.timeout, parsed.tokenizer, parsed.dialect) == (4, 2.5, "server", "llamacpp")
    assert parsed.urls == ("http://b:2/v1", "http://c:3") and parsed.model_name is None
    repeated = options("urls=http://b:2/v1", "urls=http://c:3/v1/")
    assert server_urls("http://a:1/v1/", repeated) == ["http://a:1", "http://b:2", "http://c:3"]


@pytest.mark.parametrize("item, message", [
    ("dialect=tgi", "dialect must be one of auto, vllm, llamacpp, sglang"),
    ("concurrency=0", "concurrency must be at least 1"),
    ("retries=-1", "retries must be 0 or more"),
    ("urls=ftp://x", "must start with http:// or https://"),
    ("concurency=3", "Did you mean concurrency?"),
    ("top_logprobs=many", "must be a whole number"),
])
def test_bad_options_are_one_line_errors(item, message):
    with pytest.raises(RlaifError, match=message) as err:
        options(item)
    assert "\n" not in str(err.value)


def test_url_file_adds_servers(tmp_path):
    listing = tmp_path / "servers.txt"
    listing.write_text("# the pool\nhttp://b:2/v1\n\nhttp://a:1/v1  # again\n", encoding="utf-8")
    assert server_urls("http://a:1/v1", options(f"url_file={listing}")) == ["http://a:1", "http://b:2"]
    with pytest.raises(RlaifError, match="Cannot read url_file"):
        server_urls("http://a:1/v1", options(f"url_file={tmp_path / 'missing.txt'}"))


def test_plan_groups_shared_prefixes_and_chains_or_fans_out():
    header = tuple(range(100, 110))  # what every prompt of the call shares
    conv_a, conv_b = tuple(range(200, 240)), tuple(range(300, 340))
    prefixes = sorted([header + conv_a + (1,), header + conv_a + (2,), header + conv_a + (3,), header + conv_b + (1,)])
    chained = plan(prefixes, chain=True, affinity_tokens=8)
    assert [after for _, after in chained] == [None, 0, 1, None]  # conversation a: one after another
    fanned = plan(prefixes, chain=False, affinity_tokens=8)
    assert [after for _, after in fanned] == [None, 0, 0, None]  # after the first, side by side
    assert chained[0][0] == chained[2][0] == route_key(prefixes[0], len(header), 8) != chained[3][0]
    short = sorted([header + (1,) * (GROUP_MIN_SHARED - 1) + (5,), header + (1,) * (GROUP_MIN_SHARED - 1) + (6,)])
    assert [after for _, after in plan(short, True, 8)] == [None, None]  # sharing too little: separate groups


@pytest.fixture
def two_servers(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    made = [FakeVLLM(tiny_tokenizer, str(tmp_path)), FakeVLLM(tiny_tokenizer, str(tmp_path))]
    yield made
    for fake in made:
        fake.server.close()


def conversations(tokenizer, n: int) -> list[TokenRequest]:
    """n conversations, three prompts each (principles): what a label chunk asks."""
    words = "hello bye yes no good bad ok what two plus four kind honest".split()
    out = []
    for i in range(n):
        conversation = " ".join(words[(i + j) % len(words)] for j in range(24))
        for principle in ("Choose the kind", "Choose the honest", "Which response"):
            ids = tuple(tokenizer.encode(f"Consider the following conversation {conversation} {principle} ("))
            out.append(TokenRequest(ids, ((len(ids) - 1, tokenizer.convert_tokens_to_ids("A")),)))
    return out


def test_a_conversation_sticks_to_one_server_and_a_dead_one_hands_over(two_servers, tiny_tokenizer, caplog):
    first, second = two_servers
    backend = load_backend(first.server.url, [f"urls={second.server.url}", "retries=1", "backoff=0.01"])
    requests = conversations(tiny_tokenizer, 8)
    for fake in two_servers:
        fake.server.requests.clear()
    expected = [[pytest.approx(first.model.logprobs(list(r.ids))[r.reads[0][1]], abs=1e-12)] for r in requests]
    assert backend.token_logprobs(requests) == expected
    served = [{tuple(b["prompt"][:30]) for b in fake.server.posts("/v1/completions")} for fake in two_servers]
    assert served[0] and served[1] and not served[0] & served[1]  # both used, no conversation split
    first.server.close()
    with caplog.at_level(logging.WARNING):
        assert backend.token_logprobs(requests) == expected
    assert any("stopped answering" in r.message and "move to the other 1 server" in r.message for r in caplog.records)
    second.server.close()
    with pytest.raises(RlaifError, match=r"All 2 servers stopped answering .*rerun with --resume\.$") as err:
        backend.token_logprobs(requests)
    assert "\n" not in str(err.value)


def test_servers_of_different_models_are_refused(two_servers, tiny_tokenizer, tmp_path_factory):
    other_dir = tmp_path_factory.mktemp("other-root")
    tiny_tokenizer.save_pretrained(other_dir)
    other = FakeVLLM(tiny_tokenizer, str(other_dir))
    try:
        with pytest.raises(RlaifError, match="every URL must serve the same model"):
            load_backend(two_servers[0].server.url, [f"urls={other.server.url}", "backoff=0.01"])
    finally:
        other.server.close()


def test_an_unreachable_server_at_load_says_so(tiny_tokenizer):
    with pytest.raises(RlaifError, match=r"server at http://127\.0\.0\.1:9 stopped answering after 1 tries: cannot "
                                         r"connect .*start it or check the URL"):
        load_backend("http://127.0.0.1:9/v1", ["retries=0"])
