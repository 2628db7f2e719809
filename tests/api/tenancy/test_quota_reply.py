"""quota.lua's reply, read: an allowed request with its reservation, a refusal without one,
and -1 read as "no limit"."""

from __future__ import annotations

from llmq.api.tenancy.quota_reply import decision_of


def test_an_allowed_reply_carries_its_reservation() -> None:
    reply = "1|ok||0|60|59|1000|-1|-1|0|300|0.25|1700000000500|0"
    decision = decision_of(reply, "acme", "m", "job-1")
    assert decision.allowed and not decision.duplicate
    assert (decision.limit_requests, decision.remaining_requests) == (60, 59)
    assert decision.reset_requests == 1.0
    assert decision.limit_tokens is None and decision.remaining_tokens is None
    reservation = decision.reservation
    assert reservation is not None
    assert (reservation.tenant, reservation.model, reservation.job_id) == ("acme", "m", "job-1")
    assert reservation.reserved_tokens == 300 and reservation.reserved_usd == 0.25
    assert reservation.lease_until == 1_700_000_000.5


def test_a_refusal_has_no_reservation_and_says_when_to_retry() -> None:
    reply = "0|rate_limited|rpm|1500|60|0|1500|1000|900|0|0|0|0|0"
    decision = decision_of(reply, "acme", "m", "job-2")
    assert not decision.allowed and decision.reservation is None
    assert (decision.reason, decision.limit, decision.retry_after) == ("rate_limited", "rpm", 1.5)
    assert (decision.limit_tokens, decision.remaining_tokens) == (1000, 900)


def test_a_repeated_job_id_is_a_duplicate() -> None:
    reply = "1|ok||0|-1|-1|0|-1|-1|0|10|0|1|1"
    assert decision_of(reply, "acme", "m", "job-3").duplicate
