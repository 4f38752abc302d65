import asyncio
import bisect

import pytest

from opengrok_dagster.collect.ratelimit import RateLimiter, TokenBucket


class FakeTime:
    """A clock that only moves when the limiter sleeps, so limits are checked exactly and instantly."""

    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


def grant_times(per_minute, n, amount=1.0):
    fake = FakeTime()
    bucket = TokenBucket(per_minute, clock=fake.clock, sleep=fake.sleep)
    times = []

    async def go():
        for _ in range(n):
            await bucket.acquire(amount)
            times.append(fake.now)

    asyncio.run(go())
    return times


@pytest.mark.parametrize("per_minute", [2, 30, 600, 6000])
def test_no_sixty_second_window_exceeds_the_limit(per_minute):
    times = grant_times(per_minute, n=3 * per_minute)
    for i, start in enumerate(times):
        assert bisect.bisect_left(times, start + 60.0) - i <= per_minute


@pytest.mark.parametrize("per_minute", [60, 600, 6000])
def test_sustained_rate_is_close_to_the_limit(per_minute):
    times = grant_times(per_minute, n=2 * per_minute)
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert achieved >= 0.95 * per_minute


def test_oversized_request_waits_for_a_full_bucket_instead_of_failing():
    times = grant_times(600, n=3, amount=50)  # capacity is 10 tokens
    assert times[0] == 0.0 and times[1] > 0.0


def test_refund_returns_overestimated_tokens():
    fake = FakeTime()
    limiter = RateLimiter(None, 600, clock=fake.clock, sleep=fake.sleep)

    async def go():
        await limiter.acquire(10)
        limiter.settle(10, 2)  # the server reported 2 tokens: 8 come back
        await limiter.acquire(8)

    asyncio.run(go())
    assert fake.now == 0.0


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        TokenBucket(0)
