"""Finding results that will never come.

A job's reply frames are captured by LLMQ_OUTCOMES and its message leaves LLMQ_BATCH only
when a worker acks (or terms) it, after sending its final frame. So when a job has no result
while JetStream is *quiet* for its model — nothing pending or unacked on the model's batch
consumer, nothing pending or unacked on the collector — nothing of it is left anywhere: the
result was lost (a frame dropped while the server restarted, a job dropped unseen). The
batch runner then queues the line again (first result wins, so a late original is harmless);
an async job, whose body is not kept, fails with `job_lost`.

Messages that ran out of deliveries are not counted by their consumer, but the server's
advisory for them is captured by LLMQ_OUTCOMES (see `collector`), so they are never "lost".
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmq.schemas import names


async def quiet(js: JetStreamContext, models: Iterable[str]) -> bool:
    """True when no job of `models` waits in or runs from LLMQ_BATCH and no reply frame
    waits to be collected. A model without a batch consumer (no worker ever) is not quiet:
    its jobs are still queued."""
    for model in set(models):
        try:
            info = await js.consumer_info(
                names.BATCH_STREAM, names.consumer_name(names.BATCH_STREAM, model)
            )
        except NotFoundError:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    info = await js.consumer_info(names.OUTCOMES_STREAM, names.COLLECTOR_CONSUMER)
    return not (info.num_pending or info.num_ack_pending)
