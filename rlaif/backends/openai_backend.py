"""HTTP backend for any OpenAI-compatible server (``vllm serve``, SGLang, TGI, the OpenAI API).

Conversations go to ``POST {base_url}/chat/completions`` (the server applies the chat template); a plain string
(raw-prompt mode) goes to ``POST {base_url}/completions`` as-is. Requests run concurrently, at most
``max_concurrency`` at a time; 429, 5xx, timeouts and connection errors are retried with exponential backoff and
full jitter. A record the server rejects, or that still fails after ``max_retries`` attempts, gets an error
result; the rest of the batch is served.

``base_url`` may list several servers of the same model: each attempt goes to the server with the fewest requests
in flight, a server that fails ``max_failures`` attempts in a row is taken out for ``cooldown_s`` and probed with
one request before it takes more (``rlaif.backends.server_pool``), and a record's retry goes to another server
without waiting. ``max_concurrency`` bounds the requests in flight across the whole pool. ``server_stats()`` gives
per-server counters (requests, failures, tokens, seconds, times taken out); a pipeline step records what it used.

``model`` is sent as the server knows it, never resolved: serve the builtin model as
``--served-model-name builtin:smollm2-135m-instruct`` and the same reference works for all three backends (and no
machine path travels in requests or provenance).

The API key is read from the environment variable ``api_key_env`` at each ``generate`` call and never stored on
the backend, logged, or written into an error reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from rlaif.backends.base import BackendBase, prompt_problem, transient
from rlaif.backends.server_pool import Lease, ServerPool, display_url
from rlaif.schema import Completion, GenerationParams, GenerationResult, Prompt, TokenLogprob

log = logging.getLogger(__name__)

# Transport failures worth another attempt; anything else (a malformed URL, an unsupported scheme) is configuration.
RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Server error bodies can be whole HTML pages; a reason only needs their start.
MAX_MESSAGE_CHARS = 1000


@dataclass
class _Session:
    """What one ``generate`` call shares between its requests; the secret is kept only to scrub it from reasons."""

    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    secret: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        # A misbehaving server may echo the Authorization header in its error body.
        return text.replace(self.secret, "***") if self.secret else text


class OpenAIBackend(BackendBase):
    """Generation through an OpenAI-compatible HTTP server; see the module docstring for the contract."""

    name = "openai"
    # Options that change where and how requests travel, never what a model answers: a step's cache key leaves
    # them out, so a pool can grow, shrink or move without redoing finished steps.
    transport_options = (
        "base_url",
        "api_key_env",
        "max_concurrency",
        "max_retries",
        "timeout_s",
        "backoff_base_s",
        "backoff_max_s",
        "max_failures",
        "cooldown_s",
    )

    def __init__(
        self,
        model: str,
        *,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_failures: int = 3,
        cooldown_s: float = 10.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 1:
            raise ValueError(f"max_retries (attempts per record, the first included) must be >= 1, got {max_retries}")
        if timeout_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff_base_s, backoff_max_s >= 0")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.pool = ServerPool([url.rstrip("/") for url in urls], max_failures=max_failures, cooldown_s=cooldown_s)
        self.model = model
        self.base_url: str | list[str] = self.pool.urls[0] if isinstance(base_url, str) else self.pool.urls
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._closed = False

    def __repr__(self) -> str:
        urls = [display_url(url) for url in self.pool.urls]
        shown = urls[0] if isinstance(self.base_url, str) else urls
        return f"OpenAIBackend(model={self.model!r}, base_url={shown!r}, api_key_env={self.api_key_env!r})"

    def close(self) -> None:
        """Mark the backend closed. Each ``generate`` call owns its HTTP client, so nothing stays open after it."""
        self._closed = True

    def server_stats(self) -> dict[str, dict[str, float]]:
        """Cumulative counters per server since the backend was built (``rlaif.backends.server_pool.COUNTERS``)."""
        return self.pool.stats()

    # -- generation -------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        if self._closed:
            raise RuntimeError("OpenAIBackend is closed")
        prompts = list(prompts)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._generate_async(prompts, params))
        # Called from async code (a notebook, an async pipeline): asyncio.run refuses to nest, so a worker thread
        # runs its own loop while this one waits.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self._generate_async(prompts, params)).result()

    def _api_key(self) -> str | None:
        key = (os.environ.get(self.api_key_env) or "").strip() if self.api_key_env else ""
        if not (key.isascii() and key.isprintable()):
            # httpx would reject the header with an error quoting the key; say what is wrong without it.
            raise ValueError(f"the API key in ${self.api_key_env} has characters an HTTP header cannot carry")
        return key or None

    async def _generate_async(self, prompts: list[Prompt], params: GenerationParams) -> list[GenerationResult]:
        key = self._api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        # A client per call: asyncio.run gives every call a fresh event loop, and pooled connections belong to one.
        # No base_url on the client: each attempt names its server (the pool's choice).
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits) as client:
            session = _Session(client, asyncio.Semaphore(self.max_concurrency), key)
            return list(await asyncio.gather(*(self._one(session, p, params) for p in prompts)))

    async def _one(self, session: _Session, prompt: Prompt, params: GenerationParams) -> GenerationResult:
        problem = prompt_problem(prompt)
        if problem:
            return GenerationResult.failed(problem)
        path, body = request_body(self.model, prompt, params)
        # The slot is held through backoff sleeps too, so retries never raise the load on a struggling server.
        async with session.semaphore:
            outcome = await self._post(session, path, body)
        if isinstance(outcome, str):
            return GenerationResult.failed(session.scrub(outcome))
        try:
            return parse_result(outcome, params, chat=path == "/chat/completions")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return GenerationResult.failed(f"malformed response from {path}: {type(exc).__name__}: {exc}")

    async def _post(self, session: _Session, path: str, body: dict[str, Any]) -> dict[str, Any] | str:
        """The response JSON, or why the record failed. ``max_retries`` counts attempts, the first included; each
        goes to the server the pool picks, away from the ones this record already failed on where it can."""
        last, tried = "", set()
        for attempt in range(1, self.max_retries + 1):
            lease = self.pool.acquire(avoid=tried)
            outcome, retry, retry_after = await self._attempt(session, lease, path, body)
            if not retry:
                return outcome
            last = str(outcome)
            tried.add(lease.url)
            if attempt < self.max_retries:
                # Another server that this record has not failed on takes the retry at once; else back off.
                delay = 0.0 if self.pool.has_other(tried) else self._backoff(attempt, retry_after)
                where = f" on {display_url(lease.url)}" if len(self.pool.servers) > 1 else ""
                log.warning(
                    "%s attempt %d/%d failed%s (%s); retry in %.2fs",
                    path,
                    attempt,
                    self.max_retries,
                    where,
                    session.scrub(last),
                    delay,
                )
                await asyncio.sleep(delay)
        # Marked transient: the pipeline retries this record on its next run (its neighbours are kept).
        return transient(f"gave up on {path} after {self.max_retries} attempts; last error: {last}")

    async def _attempt(
        self, session: _Session, lease: Lease, path: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any] | str, bool, float | None]:
        """One request: (the response JSON, or why it failed), whether another attempt may help, and Retry-After.
        The pool learns whether the server answered (below 500), how long it took and the tokens it served."""
        answered: bool | None = None  # None while in flight: a cancelled attempt says nothing about the server
        started, tokens = time.perf_counter(), (0, 0)
        try:
            try:
                response = await session.client.post(lease.url + path, json=body)
            except RETRYABLE_ERRORS as exc:
                answered = False
                return f"{type(exc).__name__}: {exc}".rstrip(": "), True, None
            status = response.status_code
            answered = status < 500
            if status < 400:
                try:
                    data = response.json()
                except ValueError:
                    return f"HTTP {status} from {path}, a body that is not JSON: {response.text[:200]!r}", False, None
                tokens = usage_tokens(data)
                return data, False, None
            message = error_message(response)
            if status != 429 and status < 500:
                return f"HTTP {status} from {path} (not retried): {message}", False, None
            return f"HTTP {status}: {message}", True, parse_retry_after(response.headers.get("retry-after"))
        finally:
            seconds = time.perf_counter() - started
            self.pool.release(lease, answered, seconds=seconds, tokens_in=tokens[0], tokens_out=tokens[1])

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        # Full jitter (uniform in [0, cap]) spreads the retries of many clients that failed at the same moment.
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))


# -- request / response mapping -------------------------------------------------------------------------------
def request_body(model: str, prompt: Prompt, params: GenerationParams) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for one prompt."""
    body: dict[str, Any] = {
        # vllm serve --lora-modules NAME=PATH serves an adapter under its own model name.
        "model": params.lora.name if params.lora is not None else model,
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        # max_tokens rather than chat's newer max_completion_tokens: every compatible server accepts it.
        "max_tokens": params.max_tokens,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    # choice and regex have no OpenAI field; structured_outputs is vLLM's extension (chat and completions).
    if params.choice is not None:
        body["structured_outputs"] = {"choice": list(params.choice)}
    elif params.regex is not None:
        body["structured_outputs"] = {"regex": params.regex}
    elif params.json_schema is not None:
        schema = {"name": "output", "schema": params.json_schema}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if isinstance(prompt, str):
        body["prompt"] = prompt
        if params.logprobs is not None:
            body["logprobs"] = params.logprobs
        return "/completions", body
    body["messages"] = prompt
    if params.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = params.logprobs
    return "/chat/completions", body


def parse_result(data: dict[str, Any], params: GenerationParams, *, chat: bool) -> GenerationResult:
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    usage = data.get("usage") or {}
    total = int(usage.get("completion_tokens") or 0)
    completions = []
    for i, choice in enumerate(choices):
        raw = choice.get("logprobs")
        logprobs = None
        if params.logprobs is not None:
            logprobs = _chat_logprobs(raw) if chat else _completion_logprobs(raw)
        if len(choices) == 1:
            tokens = total
        elif logprobs is not None and raw is not None:
            tokens = len(logprobs)
        else:
            # usage only reports the sum over the n choices; without logprobs an even split is the best estimate
            # (the remainder goes to the first choices so the sum stays exact).
            tokens = total // len(choices) + (1 if i < total % len(choices) else 0)
        text = (choice["message"].get("content") or "") if chat else choice["text"]
        completions.append(Completion(text, tokens, choice.get("finish_reason") or "unknown", logprobs))
    return GenerationResult(completions=completions, prompt_tokens=int(usage.get("prompt_tokens") or 0))


def usage_tokens(data: Any) -> tuple[int, int]:
    """(prompt, completion) tokens from a response's ``usage``; (0, 0) when a server leaves it out or garbles it."""
    usage = data.get("usage") if isinstance(data, dict) else None
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def _logprob(value: float | None) -> float:
    # null is how servers write a log-probability of minus infinity (JSON has no -inf).
    return -math.inf if value is None else float(value)


def _chat_logprobs(raw: dict[str, Any] | None) -> list[TokenLogprob]:
    tokens = []
    for entry in (raw or {}).get("content") or []:
        top = {alt["token"]: _logprob(alt.get("logprob")) for alt in entry.get("top_logprobs") or []}
        # Like the in-process vllm backend, the alternatives always include the sampled token.
        top.setdefault(entry["token"], _logprob(entry.get("logprob")))
        tokens.append(TokenLogprob(token=entry["token"], logprob=_logprob(entry.get("logprob")), top=top))
    return tokens


def _completion_logprobs(raw: dict[str, Any] | None) -> list[TokenLogprob]:
    raw = raw or {}
    values = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or []
    tokens = []
    for i, token in enumerate(raw.get("tokens") or []):
        logprob = _logprob(values[i] if i < len(values) else None)
        top = {alt: _logprob(lp) for alt, lp in ((tops[i] if i < len(tops) else None) or {}).items()}
        top.setdefault(token, logprob)
        tokens.append(TokenLogprob(token=token, logprob=logprob, top=top))
    return tokens


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI/vLLM ``{"error": {"message"}}``, TGI ``{"error": "..."}``, or the raw body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:MAX_MESSAGE_CHARS] or response.reason_phrase
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    return str(error)[:MAX_MESSAGE_CHARS]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None when absent or invalid."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
