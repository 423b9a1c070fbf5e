"""Which server of a pool takes the next request: least outstanding requests, failing servers taken out for a while.

The policy is pure Python (no HTTP, an injected clock), so it is unit-tested without a server or a sleep. The
``openai`` backend asks it for a server before each attempt (``acquire``) and reports the attempt's outcome
(``release``):

- **Balance**: among the servers in service, the one with the fewest requests in flight; ties go to the one sent the
  fewest requests so far, then to the first listed. A faster server finishes sooner, so it is offered more.
- **Take out**: ``max_failures`` failed attempts in a row (no answer: a connection error or a timeout; or a 5xx
  status) take a server out of service for ``cooldown_s``. A 429 or a 4xx is an answer, not a failure: the server
  works, and it resets the count. A pool of one server never takes it out (there is nowhere else to send); the
  backend's own retries and backoff decide.
- **Probe**: once its cool-down is over, a server gets exactly one request (a real one, the probe) while the others
  take the rest. An answer brings it back; a failure takes it out again for twice as long (up to 32 x ``cooldown_s``).
- **Every server out**: the request goes to the one due back first, early, rather than waiting.

Per-server counters (``stats``) are cumulative; ``usage_since`` gives what a stretch of work (a pipeline step) added.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_COOLDOWN_FACTOR = 32
# The counters kept per server, in the order stats.json shows them.
COUNTERS = ("requests", "failures", "tokens_in", "tokens_out", "seconds", "taken_out")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def display_url(url: str) -> str:
    """``url`` without credentials (``http://user:secret@host`` -> ``http://host``): what stats and logs show."""
    return _USERINFO.sub(r"\1", url)


@dataclass
class Server:
    url: str
    outstanding: int = 0  # requests in flight
    sent: int = 0  # requests handed out so far (the tie-break that spreads equal loads)
    consecutive_failures: int = 0
    out_until: float | None = None  # None: in service; else the clock time its cool-down ends
    cooldown_s: float = 0.0  # the cool-down the next take-out (or failed probe) applies
    probing: bool = False  # a probe request is in flight
    stats: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    @property
    def in_service(self) -> bool:
        return self.out_until is None


@dataclass(frozen=True)
class Lease:
    """One attempt on one server; ``probe``: the request that decides whether a server out of service comes back."""

    server: Server
    probe: bool = False

    @property
    def url(self) -> str:
        return self.server.url


class ServerPool:
    """Least-outstanding balancing with take-out, cool-down and probe; see the module docstring. Thread-safe."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        max_failures: int = 3,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a server pool needs at least one URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"a server is listed twice: {[display_url(u) for u in urls]}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.servers = [Server(url, cooldown_s=cooldown_s) for url in urls]
        self.max_failures = max_failures
        self.base_cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    # -- the policy ------------------------------------------------------------------------------------------
    def acquire(self, avoid: Collection[str] = ()) -> Lease:
        """The server for the next attempt (its request counted as in flight until ``release``). ``avoid``: servers
        this record already failed on, taken only when no other server is in service."""
        with self._lock:
            lease = self._choose(self.clock(), avoid)
            lease.server.outstanding += 1
            lease.server.sent += 1
            return lease

    def _choose(self, now: float, avoid: Collection[str]) -> Lease:
        for server in self.servers:  # a server due back gets one probe before the others get more
            if not server.in_service and server.out_until <= now and not server.probing and server.url not in avoid:
                server.probing = True
                return Lease(server, probe=True)
        live = [s for s in self.servers if s.in_service]
        candidates = [s for s in live if s.url not in avoid] or live
        if candidates:
            return Lease(min(candidates, key=lambda s: (s.outstanding, s.sent, self.servers.index(s))))
        return Lease(min(self.servers, key=lambda s: (s.out_until, s.outstanding)))  # every server out

    def has_other(self, avoid: Collection[str]) -> bool:
        """Whether ``acquire(avoid)`` would now find a server outside ``avoid`` (then a retry need not wait)."""
        with self._lock:
            now = self.clock()
            return any(
                s.url not in avoid and (s.in_service or (s.out_until <= now and not s.probing)) for s in self.servers
            )

    def release(
        self, lease: Lease, answered: bool | None, *, seconds: float = 0.0, tokens_in: int = 0, tokens_out: int = 0
    ) -> None:
        """The attempt is over. ``answered``: the server answered (any status below 500); False: no answer or a
        5xx; None: the attempt was abandoned (cancelled) and says nothing about the server."""
        with self._lock:
            server, now = lease.server, self.clock()
            server.outstanding -= 1
            if lease.probe:
                server.probing = False
            if answered is None:
                return
            stats = server.stats
            stats["requests"] += 1
            stats["seconds"] += seconds
            stats["tokens_in"] += tokens_in
            stats["tokens_out"] += tokens_out
            if answered:
                server.consecutive_failures = 0
                if not server.in_service:  # a probe (or a late answer) shows it works again
                    server.out_until, server.cooldown_s = None, self.base_cooldown_s
                    log.warning("server %s answers again: back in service", display_url(server.url))
                return
            stats["failures"] += 1
            server.consecutive_failures += 1
            if lease.probe and not server.in_service:
                server.cooldown_s = min(2 * server.cooldown_s, MAX_COOLDOWN_FACTOR * self.base_cooldown_s)
                server.out_until = now + server.cooldown_s
            elif server.in_service and server.consecutive_failures >= self.max_failures and len(self.servers) > 1:
                server.out_until = now + server.cooldown_s
                stats["taken_out"] += 1
                log.warning(
                    "server %s taken out for %.0f s after %d failed requests in a row",
                    display_url(server.url),
                    server.cooldown_s,
                    server.consecutive_failures,
                )

    # -- counters --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, float]]:
        """Cumulative counters per server (by URL, credentials removed)."""
        with self._lock:
            return {display_url(s.url): dict(s.stats) for s in self.servers}


def sum_stats(snapshots: Iterable[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Counters of several backends added up per server (two models served by one server)."""
    total: dict[str, dict[str, float]] = {}
    for snapshot in snapshots:
        for url, counters in snapshot.items():
            into = total.setdefault(url, dict.fromkeys(COUNTERS, 0))
            for key in COUNTERS:
                into[key] += counters.get(key, 0)
    return total


def failure_lines(step: str, usage: dict[str, dict]) -> list[str]:
    """One line per server that failed requests during ``step``, for the run's notes."""
    return [
        f"{step}: server {url}: {c['failures']} of {c['requests']} requests failed"
        + (f", taken out {c['taken_out']}x" if c["taken_out"] else "")
        for url, c in usage.items()
        if c["failures"]
    ]


def usage_since(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict]:
    """What each server did between two ``stats`` snapshots (servers that did nothing are left out); seconds
    rounded to milliseconds."""
    usage = {}
    for url, now in after.items():
        then = before.get(url, {})
        delta = {key: now.get(key, 0) - then.get(key, 0) for key in COUNTERS}
        if any(delta.values()):
            delta["seconds"] = round(delta["seconds"], 3)
            usage[url] = delta
    return usage
