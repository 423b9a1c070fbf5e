"""OpenAIBackend against a scripted local HTTP server (retries, errors, concurrency, secrets) and a real vllm serve."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from engine_names import BUILTIN, TEST_MAX_MODEL_LEN

from rlaif.backends import load_backend
from rlaif.backends.openai_backend import OpenAIBackend, parse_retry_after
from rlaif.schema import GenerationParams, LoraAdapter

# status, headers, JSON payload (or raw text)
Reply = tuple[int, dict[str, str], Any]
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 30.0}


def chat_reply(text: str = "hi there", *, n: int = 1, completion_tokens: int = 3, logprobs: Any = None) -> Reply:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": logprobs}
        for i in range(n)
    ]
    usage = {"prompt_tokens": 5, "completion_tokens": completion_tokens, "total_tokens": 5 + completion_tokens}
    return 200, {}, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage}


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 whose replies come from ``respond(request_number, body, headers)``."""

    def __init__(self, respond: Callable[[int, dict[str, Any], dict[str, str]], Reply], delay_s: float = 0.0):
        self.respond = respond
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, **body})
                    server.headers.append(dict(self.headers))
                    number = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)  # keeps requests overlapping so the concurrency bound is exercised
                    status, headers, payload = server.respond(number, body, dict(self.headers))
                finally:
                    with server.lock:
                        server.in_flight -= 1
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- scripted server ------------------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried_then_succeeds() -> None:
    def respond(number: int, body: dict, headers: dict) -> Reply:
        if number == 1:
            return 429, {"Retry-After": "0"}, {"error": {"message": "slow down", "code": 429}}
        return chat_reply("hello back", completion_tokens=4)

    with ScriptedServer(respond) as server, OpenAIBackend("m", base_url=server.url, **FAST) as backend:
        [result] = backend.generate([user("hello")], GenerationParams())
    assert result.ok, result.error
    assert result.completions[0].text == "hello back"
    assert result.completions[0].completion_tokens == 4
    assert result.prompt_tokens == 5
    assert len(server.requests) == 2
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_5xx_forever_fails_after_max_retries_attempts() -> None:
    def respond(number: int, body: dict, headers: dict) -> Reply:
        return 500, {}, {"error": {"message": "boom", "code": 500}}

    with ScriptedServer(respond) as server, OpenAIBackend("m", base_url=server.url, max_retries=3, **FAST) as backend:
        [result] = backend.generate([user("hello")], GenerationParams())
    assert not result.ok
    assert "500" in result.error and "3 attempts" in result.error and "boom" in result.error
    assert len(server.requests) == 3


def test_4xx_is_not_retried_and_quotes_the_server() -> None:
    def respond(number: int, body: dict, headers: dict) -> Reply:
        return 400, {}, {"error": {"message": "temperature must be tiny", "type": "BadRequestError", "code": 400}}

    with ScriptedServer(respond) as server, OpenAIBackend("m", base_url=server.url, **FAST) as backend:
        [result] = backend.generate([user("hello")], GenerationParams())
    assert not result.ok
    assert "400" in result.error and "temperature must be tiny" in result.error
    assert len(server.requests) == 1


def test_concurrency_is_bounded_and_results_keep_prompt_order() -> None:
    def respond(number: int, body: dict, headers: dict) -> Reply:
        return chat_reply("echo " + body["messages"][0]["content"])

    prompts = [user(f"p{i}") for i in range(8)]
    with (
        ScriptedServer(respond, delay_s=0.05) as server,
        OpenAIBackend("m", base_url=server.url, max_concurrency=2, **FAST) as backend,
    ):
        results = backend.generate(prompts, GenerationParams())
    assert [r.completions[0].text for r in results] == [f"echo p{i}" for i in range(8)]
    assert len(server.requests) == 8
    assert 1 <= server.max_in_flight <= 2


def test_invalid_prompts_fail_alone_without_being_sent() -> None:
    with (
        ScriptedServer(lambda *_: chat_reply()) as server,
        OpenAIBackend("m", base_url=server.url, **FAST) as backend,
    ):
        results = backend.generate([user("ok"), [], [{"role": "robot", "content": "x"}], ""], GenerationParams())
    assert [r.ok for r in results] == [True, False, False, False]
    assert results[1].error == "empty conversation" and "robot" in results[2].error
    assert len(server.requests) == 1


def test_request_bodies_map_generation_params() -> None:
    with (
        ScriptedServer(lambda *_: (200, {}, {"choices": [], "usage": {}})) as server,
        OpenAIBackend("served-name", base_url=server.url, **FAST) as backend,
    ):
        full = GenerationParams(n=2, temperature=0.3, top_p=0.9, max_tokens=7, seed=11, stop=("\n",), logprobs=3)
        backend.generate([user("a")], full)
        backend.generate(["raw"], GenerationParams(logprobs=0, choice=("yes", "no")))
        backend.generate([user("b")], GenerationParams(regex="[ab]+", lora=LoraAdapter("policy", "/adapters/p")))
        backend.generate([user("c")], GenerationParams(json_schema={"type": "object"}))
    chat, raw, regex, schema = server.requests
    assert chat["path"] == "/v1/chat/completions" and chat["model"] == "served-name"
    assert chat["messages"] == user("a")
    assert {k: chat[k] for k in ("n", "temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "n": 2, "temperature": 0.3, "top_p": 0.9, "max_tokens": 7, "seed": 11, "stop": ["\n"],
    }  # fmt: skip
    assert chat["logprobs"] is True and chat["top_logprobs"] == 3
    assert raw["path"] == "/v1/completions" and raw["prompt"] == "raw" and raw["logprobs"] == 0
    assert raw["structured_outputs"] == {"choice": ["yes", "no"]} and "messages" not in raw
    assert regex["structured_outputs"] == {"regex": "[ab]+"} and regex["model"] == "policy"
    assert schema["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}},
    }
    assert "seed" not in raw and "stop" not in raw and "logprobs" not in schema


def test_token_counts_for_n_choices() -> None:
    logprobs = {
        "content": [{"token": t, "logprob": -0.5, "top_logprobs": [{"token": t, "logprob": -0.5}]} for t in "ab"]
    }
    replies = deque([chat_reply(n=2, completion_tokens=7), chat_reply(n=2, completion_tokens=4, logprobs=logprobs)])
    with (
        ScriptedServer(lambda *_: replies.popleft()) as server,
        OpenAIBackend("m", base_url=server.url, **FAST) as backend,
    ):
        [split] = backend.generate([user("a")], GenerationParams(n=2))
        [counted] = backend.generate([user("a")], GenerationParams(n=2, logprobs=1))
    # Without logprobs the usage total is split across choices, and still sums to it.
    assert [c.completion_tokens for c in split.completions] == [4, 3]
    assert [c.completion_tokens for c in counted.completions] == [2, 2]
    assert [t.token for t in counted.completions[0].logprobs] == ["a", "b"]
    assert counted.completions[0].logprobs[0].top == {"a": -0.5}


def test_api_key_is_sent_but_never_leaks(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-NEVER-LOG-ME-8f3a"
    monkeypatch.setenv("RLAIF_TEST_API_KEY", secret)

    def respond(number: int, body: dict, headers: dict) -> Reply:
        # A careless server that echoes the credentials it got, in both retried and final errors.
        if number == 1:
            return 503, {}, {"error": {"message": f"overloaded; auth={headers.get('Authorization')}"}}
        return 401, {}, {"error": {"message": f"bad key {headers.get('Authorization')}"}}

    caplog.set_level(logging.DEBUG)
    with ScriptedServer(respond) as server:
        backend = OpenAIBackend("m", base_url=server.url, api_key_env="RLAIF_TEST_API_KEY", **FAST)
        [result] = backend.generate([user("hello")], GenerationParams())
    assert server.headers[0]["Authorization"] == f"Bearer {secret}"
    assert not result.ok and "401" in result.error and "bad key" in result.error
    assert "overloaded" in caplog.text  # the retry was logged, only without the key
    for text in (result.error, caplog.text, repr(backend), repr(vars(backend))):
        assert secret not in text


def test_unsendable_api_key_is_a_clear_error_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLAIF_TEST_API_KEY", "sk-split\nheader")
    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="RLAIF_TEST_API_KEY")
    with pytest.raises(ValueError, match="RLAIF_TEST_API_KEY") as info:
        backend.generate([user("a")], GenerationParams())
    assert "sk-split" not in str(info.value)


def test_no_auth_header_when_key_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLAIF_UNSET_KEY", raising=False)
    with (
        ScriptedServer(lambda *_: chat_reply()) as server,
        OpenAIBackend("m", base_url=server.url, api_key_env="RLAIF_UNSET_KEY", **FAST) as backend,
    ):
        [result] = backend.generate([user("a")], GenerationParams())
    assert result.ok
    assert "Authorization" not in server.headers[0]


def test_connection_errors_are_retried_then_fail_the_record() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    backend = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, **FAST)
    [result] = backend.generate([user("a")], GenerationParams())
    assert not result.ok and "2 attempts" in result.error and "ConnectError" in result.error


def test_malformed_success_body_fails_only_that_record() -> None:
    def respond(number: int, body: dict, headers: dict) -> Reply:
        return (200, {}, {"unexpected": True}) if body["messages"][0]["content"] == "bad" else chat_reply()

    with ScriptedServer(respond) as server, OpenAIBackend("m", base_url=server.url, **FAST) as backend:
        results = backend.generate([user("good"), user("bad")], GenerationParams())
    assert results[0].ok and not results[1].ok and "malformed response" in results[1].error


def test_generate_inside_a_running_event_loop() -> None:
    async def caller(backend: OpenAIBackend) -> str:
        [result] = backend.generate([user("a")], GenerationParams())
        return result.completions[0].text

    with ScriptedServer(lambda *_: chat_reply("from a thread")) as server:
        backend = load_backend("openai", "m", base_url=server.url, **FAST)
        assert isinstance(backend, OpenAIBackend)
        assert asyncio.run(caller(backend)) == "from a thread"
        backend.close()
        with pytest.raises(RuntimeError, match="closed"):
            backend.generate([user("a")], GenerationParams())


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


# -- a real vllm serve (the package fixture vllm_server, tests/backends/conftest.py) -----------------------------
@pytest.fixture(scope="module")
def served(vllm_server: str) -> Iterator[OpenAIBackend]:
    with OpenAIBackend(BUILTIN, base_url=vllm_server, timeout_s=300.0) as backend:
        yield backend


@pytest.mark.model
@pytest.mark.slow
def test_served_chat_with_n_choices(served: OpenAIBackend) -> None:
    prompts = [user("Name a fruit."), user("Say hello in French.")]
    results = served.generate(prompts, GenerationParams(n=2, temperature=0.8, max_tokens=16, seed=1))
    for result in results:
        assert result.ok, result.error
        assert len(result.completions) == 2 and result.prompt_tokens > 0
        for completion in result.completions:
            assert completion.text.strip() and completion.completion_tokens > 0
            assert completion.finish_reason in ("stop", "length")


@pytest.mark.model
@pytest.mark.slow
def test_served_raw_prompt_goes_to_completions(served: OpenAIBackend) -> None:
    [result] = served.generate(["The capital of France is"], GenerationParams(temperature=0.0, max_tokens=8))
    assert result.ok, result.error
    assert result.completions[0].text.strip() and result.completions[0].completion_tokens > 0
    assert result.prompt_tokens > 0


@pytest.mark.model
@pytest.mark.slow
def test_served_structured_choice(served: OpenAIBackend) -> None:
    params = GenerationParams(n=3, temperature=1.0, max_tokens=8, choice=("yes", "no"))
    results = served.generate([user("Is the sky blue?"), "Answer yes or no:"], params)
    texts = [c.text for r in results for c in r.completions]
    assert all(r.ok for r in results) and len(texts) == 6
    assert set(texts) <= {"yes", "no"}


@pytest.mark.model
@pytest.mark.slow
def test_served_json_schema(served: OpenAIBackend) -> None:
    schema = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}
    params = GenerationParams(temperature=0.0, max_tokens=32, json_schema=schema)
    [result] = served.generate([user("Pick a label, a or b.")], params)
    assert result.ok, result.error
    assert json.loads(result.completions[0].text)["label"] in ("a", "b")


@pytest.mark.model
@pytest.mark.slow
def test_served_logprobs(served: OpenAIBackend) -> None:
    params = GenerationParams(max_tokens=6, temperature=1.0, logprobs=2)
    for result in served.generate([user("Count to three."), "One, two,"], params):
        assert result.ok, result.error
        completion = result.completions[0]
        assert completion.logprobs and len(completion.logprobs) == completion.completion_tokens
        for token in completion.logprobs:
            assert math.isfinite(token.logprob) and token.logprob <= 0
            assert token.token in token.top and 1 <= len(token.top) <= 3
            assert all(math.isfinite(v) for v in token.top.values())


@pytest.mark.model
@pytest.mark.slow
def test_served_overlong_prompt_fails_alone(served: OpenAIBackend) -> None:
    prompts = [user("Hi!"), user("hello " * 3000), "Once upon a time"]
    results = served.generate(prompts, GenerationParams(max_tokens=8))
    assert results[0].ok and results[2].ok, (results[0].error, results[2].error)
    assert not results[1].ok and "400" in results[1].error
    assert str(TEST_MAX_MODEL_LEN) in results[1].error  # the server's own message names the context length
