"""How many times JetStream delivered a job: more than once, its backend may have run it
before (docs/reliability.md, delivery semantics)."""

from __future__ import annotations

from nats.aio.msg import Msg


def delivered(msg: Msg) -> int:
    """`msg.metadata.num_delivered` (1 for a core NATS message), read from the ack subject
    without building nats-py's Metadata (its timestamp is a datetime) for every job."""
    reply = msg.reply
    if not reply:
        return 1
    tokens = reply.split(".")
    if tokens[0] == "$JS" and tokens[1] == "ACK":
        if len(tokens) == _V1_TOKENS:
            return int(tokens[4])
        if len(tokens) >= _V2_TOKENS - 1:
            return int(tokens[Msg.Ack.NumDelivered])
    return msg.metadata.num_delivered  # raises nats-py's own error for anything else


_V1_TOKENS = 9
"""`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`"""
_V2_TOKENS = 12
"""`$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>`"""
