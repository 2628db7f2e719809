"""Tickets the queue figures may not show yet: counted from when they are given until their
job starts or a refresh that began after them succeeded."""

from __future__ import annotations

from llmq.api.fresh_tickets import FreshTickets


def test_a_ticket_counts_until_its_job_starts_or_a_later_refresh_counted_it() -> None:
    fresh = FreshTickets()
    first = fresh.given("m")
    second = fresh.given("m")
    assert fresh.count("m") == 2 and "m" in fresh
    fresh.started("m", first)
    assert fresh.count("m") == 1

    refresh = fresh.new_epoch()  # a refresh begins; a ticket given now is not in it
    third = fresh.given("m")
    assert fresh.count("m") == 2
    fresh.counted(refresh)  # it succeeded: the second ticket's job is in its num_pending
    assert fresh.count("m") == 1
    fresh.started("m", second)  # counted already: nothing changes
    assert fresh.count("m") == 1
    fresh.started("m", third)
    assert fresh.count("m") == 0 and "m" not in fresh


def test_a_failed_refresh_counts_nothing_off() -> None:
    fresh = FreshTickets()
    fresh.given("m")
    fresh.new_epoch()  # this refresh fails: `counted` is never called
    later = fresh.new_epoch()
    fresh.given("m")
    assert fresh.count("m") == 2
    fresh.counted(later)
    assert fresh.count("m") == 1
