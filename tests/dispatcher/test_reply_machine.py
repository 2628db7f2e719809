"""`ReplyMachine` driven by tables of frame sequences and clock times, as nats.py tests its
parser: each row is one input and what the machine must answer, no NATS and no timers."""

from __future__ import annotations

from typing import Any

import pytest

from llmq.dispatcher.inbox import Signal
from llmq.dispatcher.reply_machine import (
    CHECK,
    CONTINUE,
    DECODE,
    FIRST_CHUNK,
    GIVEN_BACK,
    RELAY,
    RESUMED,
    TAKEN,
    Action,
    ReplyMachine,
)
from llmq.schemas import frames
from llmq.schemas.frames import Failed

ACC, CHUNK, PING, DONE, ERROR = (
    frames.ACCEPTED,
    frames.CHUNK,
    frames.PING,
    frames.DONE,
    frames.ERROR,
)
DEADLINE, END, SILENCE = 100.0, 200.0, 3.0

# A step: ("wait", now, seconds | code) · ("frame", kind, seq, answer[, attempt]) ·
# ("requeue", seq, answer) · ("tick", answer) · ("signal", Signal, now, answer).
# An answer is an Action, or the error code of the Failed the machine ends with.
Step = tuple[Any, ...]

UNDER_WAY = "the job's deadline passed before it was under way"
MAX_DEADLINE = "the job ran past the longest time a job may take (max_deadline)"

STREAM_CASES: dict[str, list[Step]] = {
    "a stream that ends": [
        ("wait", 0.0, 100.0),
        ("frame", ACC, 0, TAKEN),
        ("wait", 1.0, SILENCE),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("frame", CHUNK, 2, RELAY),
        ("frame", PING, 3, CONTINUE),
        ("frame", CHUNK, 4, RELAY),
        ("frame", DONE, 5, DECODE),
    ],
    "an error frame ends it too": [
        ("frame", ACC, 0, TAKEN),
        ("frame", ERROR, 1, DECODE),
    ],
    "first-token deadline before any worker": [
        ("wait", 99.5, 0.5),
        ("tick", "deadline_exceeded"),
    ],
    "a deadline already passed at the wait": [
        ("wait", 100.0, "deadline_exceeded"),
    ],
    "accepted but no chunk: the deadline still bounds it": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 98.0, 2.0),
        ("tick", "deadline_exceeded"),
    ],
    "silence before the first chunk gives the job back": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 10.0, SILENCE),
        ("tick", CHECK),  # read what NATS holds for the api first
        ("wait", 10.5, 0.0),  # nothing came: judge now
        ("tick", GIVEN_BACK),
        ("wait", 13.0, 87.0),  # not accepted any more: only the deadline bounds it
        ("frame", ACC, 0, TAKEN),  # the next worker, numbering from 0 again
        ("frame", CHUNK, 1, FIRST_CHUNK),
    ],
    "missed pings after the first chunk: the worker is lost": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 150.0, SILENCE),
        ("tick", CHECK),
        ("wait", 150.5, 0.0),
        ("tick", "worker_lost"),
    ],
    "under way, the end (max_deadline) bounds it": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 199.0, 1.0),
        ("tick", "deadline_exceeded"),
    ],
    "past the end at the wait": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 200.0, "deadline_exceeded"),
    ],
    "the timer that ended the wait decides, not the clock": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 196.0, SILENCE),  # silence ends first: 3 s of 4 left
        ("tick", CHECK),
        ("wait", 196.5, 0.0),
        ("tick", "worker_lost"),  # even if the clock reads past the end by now
    ],
    "a silence is judged only after the api read what NATS held for it": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 150.0, SILENCE),
        ("tick", CHECK),
        # seen on a loaded machine: the chunk had queued in NATS behind other streams'
        # bytes while the api read slowly; it comes with the check, the stream goes on
        ("frame", CHUNK, 2, RELAY),
        ("wait", 151.0, SILENCE),  # a whole silence again, not a judgement at once
        ("tick", CHECK),
        ("frame", PING, 3, CONTINUE),
        ("wait", 155.0, SILENCE),
    ],
    "a check that outlasts the end: the end decides": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 196.0, SILENCE),
        ("tick", CHECK),
        ("wait", 200.5, "deadline_exceeded"),
    ],
    "checked close to the end: the silence is judged at once, not the end awaited": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("wait", 196.0, SILENCE),
        ("tick", CHECK),
        ("wait", 199.0, 0.0),
        ("tick", "worker_lost"),
    ],
    "before the first chunk, a frame during the check keeps the worker": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 10.0, SILENCE),
        ("tick", CHECK),
        ("frame", PING, 1, CONTINUE),  # no give-back: the worker only queued behind others
        ("frame", CHUNK, 2, FIRST_CHUNK),
    ],
    "a sequence gap": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, FIRST_CHUNK),
        ("frame", CHUNK, 3, "frames_lost"),
    ],
    "a frame before accepted": [
        ("frame", CHUNK, 0, "frames_lost"),
    ],
    "a frame without Llmq-Seq": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, -1, "frames_lost"),
    ],
    "a slow worker's first chunk after its silence takes the job back": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 10.0, SILENCE),
        ("tick", CHECK),
        ("wait", 10.5, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", CHUNK, 1, FIRST_CHUNK),  # the same worker, numbering on: not a loss
        ("frame", CHUNK, 2, RELAY),
        ("frame", DONE, 3, DECODE),
    ],
    "after its silence, a gap in the slow worker's numbering is still a loss": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 10.0, SILENCE),
        ("tick", CHECK),
        ("wait", 10.5, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", CHUNK, 2, "frames_lost"),
    ],
    "after its silence, the next delivery's frames count, not the silent one's": [
        ("frame", ACC, 0, TAKEN),
        ("frame", PING, 1, CONTINUE),
        ("wait", 10.0, SILENCE),
        ("tick", CHECK),
        ("wait", 10.5, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", ACC, 0, TAKEN, 2),  # JetStream's next delivery
        ("frame", CHUNK, 2, CONTINUE),  # the first one woke up: let pass, never relayed
        ("frame", CHUNK, 1, FIRST_CHUNK, 2),
        ("frame", CHUNK, 3, CONTINUE),
        ("frame", CHUNK, 2, RELAY, 2),
        ("frame", DONE, 3, DECODE, 2),
    ],
    "a later delivery's frame before its accepted is a loss": [
        ("frame", ACC, 0, TAKEN),
        ("frame", CHUNK, 1, "frames_lost", 2),
    ],
    "a requeue ping gives the job back": [
        ("frame", ACC, 0, TAKEN),
        ("requeue", 1, GIVEN_BACK),
        ("wait", 50.0, 50.0),
        ("frame", CHUNK, 2, "frames_lost"),  # nobody holds it: a stray chunk is a loss
    ],
    "a job JetStream gave up on": [
        ("frame", ACC, 0, TAKEN),
        ("signal", Signal.EXHAUSTED, 5.0, "attempts_exhausted"),
    ],
    "missing after a reconnect, nobody answers": [
        ("signal", Signal.MISSING, 10.0, CONTINUE),
        ("wait", 11.0, 2.0),
        ("tick", "job_lost"),
    ],
    "missing, but a worker had it": [
        ("signal", Signal.MISSING, 10.0, CONTINUE),
        ("frame", ACC, 0, TAKEN),
        ("wait", 11.0, SILENCE),
        ("tick", CHECK),
        ("wait", 11.5, 0.0),
        ("tick", GIVEN_BACK),
        ("wait", 14.0, 86.0),  # accepted cleared the missing bound
    ],
    "missing while a worker holds it changes nothing": [
        ("frame", ACC, 0, TAKEN),
        ("signal", Signal.MISSING, 10.0, CONTINUE),
        ("wait", 10.0, SILENCE),
    ],
    "missing close to the deadline: the deadline wins": [
        ("signal", Signal.MISSING, 98.0, CONTINUE),
        ("wait", 98.0, 2.0),
        ("tick", "deadline_exceeded"),
    ],
}

WHOLE_CASES: dict[str, list[Step]] = {
    "a whole job is under way once taken": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 150.0, SILENCE),
        ("frame", PING, 1, CONTINUE),
        ("wait", 198.5, 1.5),
        ("tick", "deadline_exceeded"),
    ],
    "a whole job's silent worker gives it back": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 5.0, SILENCE),
        ("tick", CHECK),
        ("wait", 5.5, 0.0),
        ("tick", GIVEN_BACK),  # no chunk relayed yet: the job goes back to the queue
        ("wait", 8.0, 92.0),
    ],
    "a whole job's slow worker answers after its silence": [
        # seen on a loaded machine (two busy loops beside the suite): the worker's process
        # stood still 1.6 s between `accepted` and its whole answer, past the 0.9 s silence
        ("wait", 0.0, 100.0),
        ("frame", ACC, 0, TAKEN),
        ("wait", 0.1, SILENCE),
        ("tick", CHECK),
        ("wait", 0.6, 0.0),
        ("tick", GIVEN_BACK),
        ("wait", 3.1, 96.9),
        ("frame", DONE, 1, DECODE),
    ],
    "a whole job's slow worker pings after its silence: it holds the job again": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 0.1, SILENCE),
        ("tick", CHECK),
        ("wait", 0.6, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", PING, 1, RESUMED),
        ("wait", 150.0, SILENCE),  # under way again: the end and silence bound it
        ("tick", CHECK),
        ("wait", 150.5, 0.0),
        ("tick", GIVEN_BACK),  # silent once more
        ("frame", PING, 2, RESUMED),
        ("frame", DONE, 3, DECODE),
    ],
    "a whole job's slow worker may give the job back when it resumes": [
        ("frame", ACC, 0, TAKEN),
        ("wait", 0.1, SILENCE),
        ("tick", CHECK),
        ("wait", 0.6, 0.0),
        ("tick", GIVEN_BACK),
        ("requeue", 1, GIVEN_BACK),
        ("frame", DONE, 2, "frames_lost"),  # it said it let go: nothing more comes from it
    ],
    "a stray final frame without a silence before is a loss": [
        ("frame", DONE, 0, "frames_lost"),
    ],
    "a whole job delivered again while its slow worker still runs it": [
        # seen on a loaded machine: one worker stood still past the silence and past the
        # ack wait (2 s), so JetStream gave it the job a second time; the first delivery's
        # frames kept coming, numbered on from its own `accepted`
        ("frame", ACC, 0, TAKEN),
        ("wait", 0.1, SILENCE),
        ("tick", CHECK),
        ("wait", 0.6, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", PING, 1, RESUMED),
        ("frame", ACC, 0, TAKEN, 2),
        ("wait", 1.0, SILENCE),
        ("tick", CHECK),
        ("wait", 1.5, 0.0),
        ("tick", GIVEN_BACK),
        ("frame", DONE, 2, CONTINUE),  # the first delivery's answer: let pass
        ("frame", PING, 1, RESUMED, 2),
        ("frame", DONE, 2, DECODE, 2),
    ],
    "a whole job ends with done": [
        ("frame", ACC, 0, TAKEN),
        ("frame", PING, 1, CONTINUE),
        ("frame", DONE, 2, DECODE),
    ],
}


def _check(answer: Action | Failed | float, expected: Any) -> None:
    if isinstance(expected, str):
        assert isinstance(answer, Failed), answer
        assert answer.error.code == expected
        if expected == "deadline_exceeded":
            assert answer.status == 504
            assert answer.error.message in (UNDER_WAY, MAX_DEADLINE)
    else:
        assert answer == expected


def _run(machine: ReplyMachine, steps: list[Step]) -> None:
    for number, step in enumerate(steps):
        what = step[0]
        if what == "wait":
            answer: Any = machine.wait(step[1])
            expected = step[2]
        elif what == "frame":
            attempt = step[4] if len(step) > 4 else 1
            answer, expected = machine.frame(step[1], step[2], attempt=attempt), step[3]
        elif what == "requeue":
            answer, expected = machine.frame(PING, step[1], requeued=True), step[2]
        elif what == "tick":
            answer, expected = machine.tick(), step[1]
        else:
            answer, expected = machine.signal(step[1], step[2]), step[3]
        try:
            _check(answer, expected)
        except AssertionError as exc:
            raise AssertionError(f"step {number} {step}: got {answer!r}") from exc


@pytest.mark.parametrize("steps", STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_stream(steps: list[Step]) -> None:
    _run(ReplyMachine(DEADLINE, END, SILENCE, stream=True), steps)


@pytest.mark.parametrize("steps", WHOLE_CASES.values(), ids=WHOLE_CASES.keys())
def test_whole(steps: list[Step]) -> None:
    _run(ReplyMachine(DEADLINE, END, SILENCE, stream=False), steps)


@pytest.mark.parametrize(
    ("stream", "steps", "message"),
    [
        (True, [("wait", 100.0)], UNDER_WAY),
        (True, [("frame", ACC, 0), ("wait", 100.0)], UNDER_WAY),
        (True, [("frame", ACC, 0), ("frame", CHUNK, 1), ("wait", 200.0)], MAX_DEADLINE),
        (False, [("frame", ACC, 0), ("wait", 200.0)], MAX_DEADLINE),
    ],
)
def test_which_deadline_passed_is_named(stream: bool, steps: list[Step], message: str) -> None:
    machine = ReplyMachine(DEADLINE, END, SILENCE, stream)
    answer: Any = None
    for step in steps:
        answer = machine.wait(step[1]) if step[0] == "wait" else machine.frame(step[1], step[2])
    assert isinstance(answer, Failed)
    assert (answer.status, answer.error.message) == (504, message)


def test_a_check_may_take_until_the_bound_that_ends_the_job() -> None:
    machine = ReplyMachine(DEADLINE, END, SILENCE, stream=True)
    assert machine.left(40.0) == 60.0  # the deadline, until under way
    machine.frame(ACC, 0)
    assert machine.left(40.0) == 60.0
    machine.frame(CHUNK, 1)
    assert machine.left(40.0) == 160.0  # then the end (max_deadline)


def test_without_a_max_deadline_the_end_is_the_deadline() -> None:
    machine = ReplyMachine(DEADLINE, 0.0, SILENCE, stream=True)
    machine.frame(ACC, 0)
    machine.frame(CHUNK, 1)
    assert machine.wait(99.0) == 1.0
    answer = machine.wait(100.0)
    assert isinstance(answer, Failed)
    assert answer.error.message == UNDER_WAY  # the end never passed the deadline
