"""A batch MongoDB refused comes back later and later, never in a hot loop."""

from server.intake import MAX_RETRY_DELAY, RETRY_DELAY, retry_delay


def test_retry_delay_doubles_per_delivery_up_to_a_ceiling():
    delays = [retry_delay(deliveries) for deliveries in range(1, 8)]
    assert delays == [RETRY_DELAY, 2.0, 4.0, 8.0, MAX_RETRY_DELAY, MAX_RETRY_DELAY, MAX_RETRY_DELAY]
    assert retry_delay(10_000) == MAX_RETRY_DELAY  # no overflow on very long outages
