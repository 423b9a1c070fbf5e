"""A pool of servers behind the openai backend: the balancing policy on a fake clock, a pool of a server that answers
500s and one that works (scripted, then a real `vllm serve` through a pipeline run), per-server stats in the step's
stats, and the pipeline file's checks of ``base_url``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_names import BUILTIN
from test_openai_backend import FAST, Reply, ScriptedServer, chat_reply, user

from rlaif.backends.openai_backend import OpenAIBackend
from rlaif.backends.server_pool import ServerPool, display_url, failure_lines, sum_stats, usage_since
from rlaif.config import ConfigError
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.schema import GenerationParams


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_of(count: int, **options: float) -> tuple[ServerPool, Clock]:
    clock = Clock()
    return ServerPool([f"http://s{i}/v1" for i in range(count)], clock=clock, **options), clock


def fail(pool: ServerPool, url: str, times: int) -> None:
    for _ in range(times):
        lease = pool.acquire(avoid=[u for u in pool.urls if u != url])
        assert lease.url == url
        pool.release(lease, False)


# -- the policy, on a fake clock ----------------------------------------------------------------------------------
def test_requests_go_to_the_server_with_the_fewest_in_flight() -> None:
    pool, _ = pool_of(3)
    leases = [pool.acquire() for _ in range(6)]
    assert [lease.url for lease in leases] == ["http://s0/v1", "http://s1/v1", "http://s2/v1"] * 2
    pool.release(leases[4], True)  # s1 finishes one: it has the fewest in flight
    assert pool.acquire().url == "http://s1/v1"
    pool.release(leases[0], True)
    pool.release(leases[3], True)  # s0 now has none in flight
    assert [pool.acquire().url for _ in range(2)] == ["http://s0/v1", "http://s0/v1"]
    # a record's retry avoids the server it failed on, even when that one is the least loaded
    pool.release(leases[2], True)
    pool.release(leases[5], True)
    assert pool.acquire(avoid=["http://s2/v1"]).url != "http://s2/v1"


def test_a_failing_server_is_taken_out_probed_after_its_cooldown_and_brought_back() -> None:
    pool, clock = pool_of(2, max_failures=3, cooldown_s=10.0)
    bad, good = pool.urls
    fail(pool, bad, 2)
    answered = pool.acquire(avoid=[good])
    pool.release(answered, True)  # an answer resets the count: 2 failures, 1 answer, 2 failures is not 3 in a row
    fail(pool, bad, 2)
    assert pool.servers[0].in_service
    fail(pool, bad, 1)
    assert not pool.servers[0].in_service and pool.stats()[bad]["taken_out"] == 1
    assert {pool.acquire().url for _ in range(5)} == {good}  # out: nothing goes there, even with load elsewhere

    clock.now += 9.9
    assert pool.acquire().url == good
    clock.now += 0.1  # the cool-down is over: exactly one request probes it while the others go on elsewhere
    probe = pool.acquire()
    assert probe.url == bad and probe.probe
    assert pool.acquire().url == good
    pool.release(probe, False)  # the probe failed: out again, for twice as long
    clock.now += 19.9
    assert pool.acquire().url == good
    clock.now += 0.1
    probe = pool.acquire()
    assert probe.url == bad and probe.probe
    pool.release(probe, True)  # it answers again: back in service, with the first cool-down for next time
    assert pool.servers[0].in_service and pool.servers[0].cooldown_s == 10.0
    assert pool.acquire().url == bad  # the least loaded again (the good one holds every request above)
    stats = pool.stats()[bad]
    assert (stats["requests"], stats["failures"], stats["taken_out"]) == (8, 6, 1)


def test_every_server_out_sends_to_the_one_due_back_first() -> None:
    pool, clock = pool_of(2, max_failures=1, cooldown_s=10.0)
    fail(pool, pool.urls[0], 1)
    clock.now += 5
    fail(pool, pool.urls[1], 1)
    lease = pool.acquire()
    assert lease.url == pool.urls[0] and not lease.probe  # due back at 110, the other at 115; not waited for


def test_a_pool_of_one_never_takes_its_server_out() -> None:
    pool, _ = pool_of(1, max_failures=1)
    fail(pool, pool.urls[0], 5)
    assert pool.servers[0].in_service and pool.stats()[pool.urls[0]]["taken_out"] == 0


def test_an_abandoned_attempt_says_nothing_about_the_server() -> None:
    pool, clock = pool_of(2, max_failures=1, cooldown_s=1.0)
    fail(pool, pool.urls[0], 1)
    clock.now += 1
    probe = pool.acquire()
    pool.release(probe, None)  # cancelled: no request counted, the next request may probe
    assert pool.stats()[pool.urls[0]]["requests"] == 1
    assert pool.acquire().probe


def test_counters_per_step_and_what_stats_show() -> None:
    before = {"http://a": {"requests": 2, "failures": 1, "tokens_in": 5, "tokens_out": 7, "seconds": 0.5}}
    after = {
        "http://a": {"requests": 5, "failures": 3, "tokens_in": 9, "tokens_out": 7, "seconds": 0.75, "taken_out": 1},
        "http://b": {"requests": 0, "failures": 0, "tokens_in": 0, "tokens_out": 0, "seconds": 0.0, "taken_out": 0},
    }
    usage = usage_since(before, after)
    assert usage == {
        "http://a": {"requests": 3, "failures": 2, "tokens_in": 4, "tokens_out": 0, "seconds": 0.25, "taken_out": 1}
    }  # a server that did nothing in the step is left out
    assert failure_lines("gen", usage) == ["gen: server http://a: 2 of 3 requests failed, taken out 1x"]
    assert sum_stats([after, after])["http://a"]["requests"] == 10
    assert display_url("https://user:s3cret@host:8000/v1") == "https://host:8000/v1"
    with pytest.raises(ValueError, match="listed twice"):
        ServerPool(["http://a", "http://a"])


# -- scripted servers ---------------------------------------------------------------------------------------------
def always_500(number: int, body: dict, headers: dict) -> Reply:
    return 500, {}, {"error": {"message": "internal error", "code": 500}}


def echo(number: int, body: dict, headers: dict) -> Reply:
    return chat_reply("echo " + body["messages"][0]["content"], completion_tokens=3)


def test_a_pool_with_a_failing_server_serves_every_record_from_the_other() -> None:
    prompts = [user(f"p{i}") for i in range(12)]
    with ScriptedServer(always_500) as bad, ScriptedServer(echo, delay_s=0.02) as good:
        options = {**FAST, "max_failures": 2, "cooldown_s": 600.0, "max_retries": 3, "max_concurrency": 4}
        with OpenAIBackend("m", base_url=[bad.url, good.url], **options) as backend:
            results = backend.generate(prompts, GenerationParams())
            stats = backend.server_stats()
    assert [r.completions[0].text for r in results] == [f"echo p{i}" for i in range(12)]
    assert stats[bad.url]["failures"] == stats[bad.url]["requests"] == len(bad.requests) >= 2
    assert stats[bad.url]["taken_out"] == 1 and stats[bad.url]["tokens_out"] == 0
    assert stats[good.url]["requests"] == len(good.requests) == 12 and stats[good.url]["failures"] == 0
    assert stats[good.url]["tokens_in"] == 12 * 5 and stats[good.url]["tokens_out"] == 12 * 3
    assert stats[good.url]["seconds"] >= 12 * 0.02


def pool_pipeline(tmp_path: Path, urls: list[str], model: str = "m", extra: str = "") -> Path:
    records = ", ".join(f"{{prompt: 'Name a colour, number {i}.'}}" for i in range(12))
    path = tmp_path / "pool.yaml"
    listed = "".join(f"\n      - {url}" for url in urls)
    path.write_text(
        "name: pool\nseed: 1\nmodels:\n  policy:\n    backend: openai\n"
        f"    model: {model}\n    base_url:{listed}\n"
        "    max_failures: 2\n    cooldown_s: 600\n    max_retries: 3\n    backoff_base_s: 0.01\n"
        "    backoff_max_s: 0.05\n    timeout_s: 300\n    max_concurrency: 4\n    temperature: 0.7\n"
        f"    max_tokens: 8\n{extra}"
        f"steps:\n  - {{name: seeds, type: inline, records: [{records}]}}\n"
        "  - {name: responses, type: generate_responses, from: seeds, model: policy, n: 1, batch_size: 12}\n"
        f"output: {{save: '{tmp_path / 'dataset'}'}}\n"
    )
    return path


def test_growing_the_pool_keeps_finished_steps(tmp_path: Path) -> None:
    with ScriptedServer(echo) as first, ScriptedServer(echo) as second:
        path = pool_pipeline(tmp_path, [first.url])
        one = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
        assert one.stats["responses"]["servers"][first.url]["requests"] == 12
        saved = json.loads((tmp_path / "run" / "steps" / "responses" / "stats.json").read_text())
        assert saved["servers"] == one.stats["responses"]["servers"]
        two = run_pipeline(load_pipeline(pool_pipeline(tmp_path, [first.url, second.url])), run_dir=tmp_path / "run")
    assert two.stats["responses"].get("cached")  # the servers are not part of the cache key
    assert len(first.requests) == 12 and not second.requests


# -- the pipeline file ---------------------------------------------------------------------------------------------
def test_base_url_lists_are_checked_with_file_and_line(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:8000/v1", "htp://oops", "http://127.0.0.1:8000/v1/", "http://h:99999/v1"]
    path = pool_pipeline(tmp_path, urls)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path, ["models.policy.max_failures=0"])
    text = str(info.value)
    assert "pool.yaml:7: base_url[1]: got 'htp://oops'; expected an http:// or https:// server URL" in text
    assert "pool.yaml:7: base_url[2]: 'http://127.0.0.1:8000/v1/' is listed twice (as base_url[0])" in text
    assert "pool.yaml:7: base_url[3]: 'http://h:99999/v1' is not a URL" in text
    assert "max_failures must be >= 1" in text and text.startswith("4 problems")
    path = pool_pipeline(tmp_path, urls[:1])
    with pytest.raises(ConfigError, match="base_url is an empty list"):
        load_pipeline(path, ["models.policy.base_url=[]"])
    with pytest.raises(ConfigError, match=r"base_url must be str or list, got \[5\]"):
        load_pipeline(path, ["models.policy.base_url=[5]"])
    with pytest.raises(ConfigError, match="base_url: got 'localhost:8000'"):
        load_pipeline(path, ["models.policy.base_url=localhost:8000"])


# -- a real `vllm serve` beside a server that answers 500s --------------------------------------------------------
@pytest.mark.model
@pytest.mark.slow
def test_a_pipeline_on_a_pool_of_vllm_serve_and_a_broken_server(tmp_path: Path, vllm_server: str) -> None:
    with ScriptedServer(always_500) as bad:
        path = pool_pipeline(tmp_path, [bad.url, vllm_server], model=BUILTIN)
        summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    stats = summary.stats["responses"]
    assert summary.outcome.status == "ok" and stats["records_out"] == 12 and not stats["quarantined"]
    assert summary.rows == {"responses": 12}
    servers = stats["servers"]
    assert servers[bad.url]["failures"] == servers[bad.url]["requests"] == len(bad.requests) >= 2
    assert servers[bad.url]["taken_out"] == 1
    assert servers[vllm_server]["requests"] == 12 and servers[vllm_server]["failures"] == 0
    # every token the step counted was served by the working server
    assert servers[vllm_server]["tokens_out"] == stats["tokens_out"] > 0
    assert servers[vllm_server]["tokens_in"] == stats["tokens_in"] > 0
