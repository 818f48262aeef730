"""The per-connection budgets of relay/limits.py, on their own."""

from securechat.relay.limits import Strikes, TokenBucket


def test_the_twentieth_rejection_within_ten_seconds_is_one_too_many():
    strikes = Strikes()
    assert len(strikes) == 0
    assert not any(strikes.add(100.0 + i * 0.1) for i in range(19))
    assert strikes.add(102.0)
    assert len(strikes) == 20


def test_rejections_older_than_the_window_are_forgotten():
    strikes = Strikes(limit=3, window=10.0)
    assert not strikes.add(0.0)
    assert not strikes.add(1.0)
    assert not strikes.add(10.5)  # the one at 0.0 has left the window
    assert len(strikes) == 2
    assert strikes.add(10.6)


def test_a_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait(0.0) == 0.5
    assert bucket.take(0.5) and not bucket.take(0.5)
