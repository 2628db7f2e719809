"""What following one job's reply frames decides, without I/O: a pure state machine.

`JobRun.events` (dispatcher/dispatch.py) is its thin async shell: it asks `wait(now)` how
long to wait for the next item (or gets the failure when the bound already passed), waits on
the job's mailbox, and feeds what came — a frame (`frame`), a dispatcher signal (`signal`),
or nothing before the bound (`tick`) — back in. Each feed returns one action for the shell:

- `CONTINUE`: nothing to do, wait again;
- `TAKEN`: a worker accepted the job (fair share frees a place, the worker is named);
- `GIVEN_BACK`: the worker gave it back (died before acking, or a requeue ping);
- `RESUMED`: the worker taken for lost by its silence answered after all (a ping);
- `CHECK`: a silence ran out: read everything NATS holds for the api first
  (`ReplyInbox.caught_up`), then ask `wait` again;
- `RELAY` / `FIRST_CHUNK`: relay the chunk (the first one starts the stream);
- `DECODE`: a final frame: decode it and end with its `Done` or `Failed`;
- a `Failed`: end with it.

The bounds (docs/protocol.md, "Deadlines"): the job's deadline until it is under way (a
stream's first chunk, or a worker taking a job that answers whole), then its end
(`max_deadline`) and three ping intervals of silence; a passed deadline or end is always a
504, never a lost worker. Which bound ended a wait decides the answer, never a second look at
the clock: a timer may fire a hair early, and a passed deadline must not read as a silent
worker (the mailbox's timer itself absorbs the api's own stalls: docs/protocol.md).

A silence is the worker's only once the api has read what NATS held for it: a timer that
runs out answers `CHECK`, and only a silence that outlasts that round trip counts. A process
that reads slowly (a starved CPU, many large streams at once) leaves frames queued in NATS,
and the worker, held back by NATS meanwhile, sends nothing: that is the api's own slowness,
not the worker's silence.

Silence before any token only gives the job back to the queue: a worker that stood still
(a starved CPU, a long garbage collection) past three ping intervals is not dead, and its
next frame, numbered where it left off, takes the job back; only a frame out of sequence,
or one from a worker that handed the job back itself, is `frames_lost`. A worker that stood
still past JetStream's ack wait may find its job delivered again meanwhile (to another
worker, or to itself): frames say which delivery they belong to (`Llmq-Attempt`), the
newest that said `accepted` is followed, and an earlier one's frames are let pass unread.
"""

from __future__ import annotations

import enum

from llmq.dispatcher.inbox import Signal
from llmq.schemas import frames
from llmq.schemas.frames import Failed, failure


class Action(enum.Enum):
    CONTINUE = 0
    TAKEN = 1
    GIVEN_BACK = 2
    RELAY = 3
    FIRST_CHUNK = 4
    DECODE = 5
    RESUMED = 6
    CHECK = 7


CONTINUE, TAKEN, GIVEN_BACK = Action.CONTINUE, Action.TAKEN, Action.GIVEN_BACK
RELAY, FIRST_CHUNK, DECODE = Action.RELAY, Action.FIRST_CHUNK, Action.DECODE
RESUMED, CHECK = Action.RESUMED, Action.CHECK

_BOUND, _SILENCE, _MISSING = 0, 1, 2


def past(max_deadline: bool) -> Failed:
    """A passed deadline: always 504 `deadline_exceeded`, whatever else was going on."""
    if max_deadline:
        message = "the job ran past the longest time a job may take (max_deadline)"
    else:
        message = "the job's deadline passed before it was under way"
    return failure(504, message, "timeout", "deadline_exceeded")


def lost() -> Failed:
    return failure(
        503,
        "the job queue lost the job (the NATS server restarted); send it again",
        "service_unavailable",
        "job_lost",
    )


def exhausted() -> Failed:
    return failure(502, "every attempt at the job failed", "upstream_error", "attempts_exhausted")


def worker_lost() -> Failed:
    return failure(502, "the worker stopped responding", "upstream_error", "worker_lost")


def frames_lost() -> Failed:
    return failure(502, "reply frames were lost", "upstream_error", "frames_lost")


def unread() -> Failed:
    """A stream cut because its client stopped reading it (`Signal.OVERFLOW`: the inbox
    cancelled the job); what was generated is booked."""
    return failure(
        408,
        "the stream was cut: the client did not read it (more than LLMQ_STREAM_BUFFER_BYTES "
        "waiting for LLMQ_STREAM_DRAIN_TIMEOUT seconds)",
        "timeout",
        "stream_not_read",
    )


class ReplyMachine:
    """One job's reply state: accepted, relaying, the next sequence number, and which bound
    the current wait ends at. Times are wall-clock seconds (`time.time()`)."""

    __slots__ = (
        "_checked",
        "_silent",
        "_why",
        "accepted",
        "attempt",
        "deadline",
        "end",
        "expected_seq",
        "missing_until",
        "relayed",
        "silence",
        "stream",
    )

    def __init__(self, deadline: float, end: float, silence: float, stream: bool) -> None:
        self.deadline = deadline
        """Unix seconds by which the job must be under way."""
        self.end = max(deadline, end)
        """Unix seconds by which it must have ended (`max_deadline`)."""
        self.silence = silence
        """Seconds without a frame after which an accepted job's worker is taken for lost."""
        self.stream = stream
        self.accepted = False
        self.relayed = False
        self.expected_seq = 0
        self.missing_until: float | None = None
        """Set when the job was not found in its stream: a worker must show up before this."""
        self._why = _BOUND
        self.attempt = 0
        """The job's delivery (JetStream's count, from 1) whose frames are followed."""
        self._silent = False
        """The worker that took the job was given up for its silence, not gone by its own
        word: its next frame in sequence takes the job back."""
        self._checked = False
        """The silence ran out once and the api has since read all NATS held for it
        (`CHECK`): if nothing came, the worker is silent."""

    @property
    def under_way(self) -> bool:
        return self.relayed or (self.accepted and not self.stream)

    def _past(self) -> Failed:
        return past(self.under_way and self.end > self.deadline)

    def left(self, now: float) -> float:
        """Seconds to the bound that ends the job (its deadline, or its end once under
        way): the longest a `CHECK` may take."""
        return (self.end if self.under_way else self.deadline) - now

    def wait(self, now: float) -> float | Failed:
        """Seconds to wait for the next item, or the failure when the bound already passed."""
        left = self.left(now)
        if left <= 0:
            return self._past()
        wait, self._why = left, _BOUND
        if self.accepted and (self._checked or self.silence < wait):
            # checked: what NATS held was read and nothing came: judged now, bound or not
            wait, self._why = (0.0 if self._checked else self.silence), _SILENCE
        elif not self.accepted and self.missing_until is not None:
            missing_left = max(0.0, self.missing_until - now)
            if missing_left < wait:
                wait, self._why = missing_left, _MISSING
        return wait

    def tick(self) -> Action | Failed:
        """The wait ended with nothing: the bound it was set for decides."""
        why = self._why
        if why == _BOUND:
            return self._past()
        if why == _MISSING:
            return lost()
        if not self._checked:
            self._checked = True
            return CHECK
        self._checked = False
        if not self.relayed:
            # The worker died before acking (JetStream hands the job to another), or only
            # stands still: it may yet answer (`_resume`).
            self.accepted, self._silent = False, True
            return GIVEN_BACK
        return worker_lost()

    def signal(self, signal: Signal, now: float) -> Action | Failed:
        """What the dispatcher itself learnt about the job."""
        if signal is Signal.EXHAUSTED:
            return exhausted()
        if signal is Signal.OVERFLOW:
            return unread()
        if not self.accepted:  # MISSING: a worker must show up within a silence
            self.missing_until = now + self.silence
        return CONTINUE

    def frame(
        self, kind: str | None, seq: int, requeued: bool = False, attempt: int = 1
    ) -> Action | Failed:
        """A reply frame of `kind` (`Llmq-Frame`) numbered `seq` (`Llmq-Seq`, -1 if none)
        by the job's `attempt`th delivery (`Llmq-Attempt`, 1 if none); `requeued`: a ping
        marked `Llmq-Requeued`."""
        self._checked = False  # something came: a silence starts again
        if kind == frames.ACCEPTED:
            self.accepted, self.expected_seq, self.missing_until = True, seq + 1, None
            self._silent, self.attempt = False, attempt
            return TAKEN
        if seq != self.expected_seq or not self.accepted or attempt != self.attempt:
            return self._stray(kind, seq, requeued, attempt)
        self.expected_seq += 1
        if kind == frames.CHUNK:
            if self.relayed:
                return RELAY
            self.relayed = True
            return FIRST_CHUNK
        if kind == frames.PING:
            if requeued:
                self.accepted = False
                return GIVEN_BACK
            return CONTINUE
        return DECODE

    def _stray(self, kind: str | None, seq: int, requeued: bool, attempt: int) -> Action | Failed:
        """A frame the followed delivery did not lead to expect. An earlier delivery that
        still runs is let pass; the worker given up for its silence, numbering on where it
        stopped, holds the job again; anything else is a loss."""
        if attempt < self.attempt:
            return CONTINUE
        if attempt != self.attempt or self.accepted or not self._silent or seq != self.expected_seq:
            return frames_lost()
        self.accepted, self._silent, self.missing_until = True, False, None
        action = self.frame(kind, seq, requeued, attempt)
        return RESUMED if action is CONTINUE else action
