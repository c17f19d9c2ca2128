"""Rate limits of the hub: registration, link issuance and sign-in, per client IP and per token.

Each limit is a token bucket: ``count`` requests at once, refilled at ``count`` per ``seconds``.
A request over a limit is refused with 429 and ``Retry-After`` (whole seconds until it would
pass). Limits are kept in memory, per hub process; the client IP is the connection's peer (or what a
trusted proxy says: uvicorn's ``--forwarded-allow-ips``, 127.0.0.1 by default).

This is the one thing a hub process keeps for itself. Behind N replicas (or ``--workers N``) a
client may get up to N times each limit; the limits of the whole hub belong at the load balancer
(``deploy/nginx-llamahub.conf`` has them), these stay as a per-process second line. Nothing else
depends on them: caps, acceptances, grants and the audit log are in the database.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from llamahub.hub.errors import BadRequestError, HubError

MAX_KEYS = 100_000  # buckets kept; the least recently used go first


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


DEFAULT_LIMITS: Mapping[str, Rate | None] = {
    "register.ip": Rate(20, 60),
    "link.token": Rate(60, 60),
    "link.ip": Rate(300, 60),
    "sign-in.ip": Rate(10, 60),
    "sign-in.token": Rate(10, 60),
}


class RateLimitedError(HubError):
    code = "rate_limited"
    status = 429

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"too many {what} requests; try again in {retry_after} s",
                         hint="wait for the Retry-After seconds; the hub operator sets the limits "
                              "(`llamahub hub serve --rate-limit`)")
        self.headers = {"Retry-After": str(retry_after)}


def parse_limits(specs: Iterable[str]) -> dict[str, Rate | None]:
    """The default limits with ``NAME=COUNT/SECONDS`` (or ``NAME=off``) applied."""
    limits = dict(DEFAULT_LIMITS)
    for spec in specs:
        name, _, value = spec.partition("=")
        name = name.strip()
        if name not in DEFAULT_LIMITS:
            raise BadRequestError(f"unknown rate limit {name!r}", code="bad_rate_limit",
                                  hint=f"known limits: {', '.join(DEFAULT_LIMITS)}")
        if value.strip() == "off":
            limits[name] = None
            continue
        count, _, seconds = value.partition("/")
        try:
            rate = Rate(int(count), float(seconds))
        except ValueError:
            rate = Rate(0, 0)
        if not (1 <= rate.count <= 10**9 and 0 < rate.seconds <= 86400 * 30):
            raise BadRequestError(f"bad rate limit {spec!r}", code="bad_rate_limit",
                                  hint="write NAME=COUNT/SECONDS, like register.ip=20/60, or NAME=off")
        limits[name] = rate
    return limits


class RateLimiter:
    """Token buckets by (limit name, key); thread-safe (handlers run in the thread pool)."""

    def __init__(self, limits: Mapping[str, Rate | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = dict(DEFAULT_LIMITS if limits is None else limits)
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, what: str, **keys: str | None) -> None:
        """Take one request from each bucket ``what.<kind>`` (kind: ip, token); 429 if any is empty."""
        now = self.clock()
        with self._lock:
            taken: list[tuple[tuple[str, str], tuple[float, float]]] = []
            for kind, key in keys.items():
                rate = self.limits.get(f"{what}.{kind}")
                if rate is None or key is None:
                    continue
                bucket = (f"{what}.{kind}", key)
                tokens, last = self._buckets.get(bucket, (float(rate.count), now))
                tokens = min(float(rate.count), tokens + (now - last) * rate.count / rate.seconds)
                if tokens < 1:
                    retry = math.ceil((1 - tokens) * rate.seconds / rate.count)
                    raise RateLimitedError(what, max(retry, 1))
                taken.append((bucket, (tokens - 1, now)))
            for bucket, state in taken:  # only when every bucket had room
                self._buckets[bucket] = state
                self._buckets.move_to_end(bucket)
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
