"""The rate limiter's buckets and the ``--rate-limit`` syntax (the HTTP side is in test_hostile.py)."""

from __future__ import annotations

import pytest

from llamahub.hub.errors import BadRequestError
from llamahub.hub.ratelimit import DEFAULT_LIMITS, Rate, RateLimitedError, RateLimiter, parse_limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter({"link.token": Rate(3, 60)}, clock=clock)
    for _ in range(3):
        limiter.check("link", token="u_1")
    with pytest.raises(RateLimitedError) as refused:
        limiter.check("link", token="u_1")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "20"}
    limiter.check("link", token="u_2")  # another token has its own bucket
    clock.now += 20
    limiter.check("link", token="u_1")  # one request back after 60/3 s
    with pytest.raises(RateLimitedError):
        limiter.check("link", token="u_1")


def test_a_refusal_by_one_bucket_takes_nothing_from_the_others() -> None:
    limiter = RateLimiter({"link.token": Rate(1, 60), "link.ip": Rate(2, 60)}, clock=Clock())
    limiter.check("link", token="a", ip="1.2.3.4")
    with pytest.raises(RateLimitedError):
        limiter.check("link", token="a", ip="1.2.3.4")  # the token's bucket is empty
    limiter.check("link", token="b", ip="1.2.3.4")  # the IP still had its second request
    with pytest.raises(RateLimitedError):
        limiter.check("link", token="c", ip="1.2.3.4")


def test_limits_parse_and_switch_off() -> None:
    limits = parse_limits(["register.ip=5/10", "sign-in.ip=off"])
    assert limits["register.ip"] == Rate(5, 10) and limits["sign-in.ip"] is None
    assert limits["link.token"] == DEFAULT_LIMITS["link.token"]
    limiter = RateLimiter(limits, clock=Clock())
    for _ in range(100):
        limiter.check("sign-in", ip="1.2.3.4")  # off: never refused
    for bad in ("nope=1/1", "register.ip=0/60", "register.ip=five/60", "register.ip=5"):
        with pytest.raises(BadRequestError):
            parse_limits([bad])
