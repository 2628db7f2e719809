"""Every NATS subject, stream, bucket, header and Redis key prefix llmq uses, by where it
lives: `subjects` (NATS) and `keys` (Redis/Valkey).

Nothing else in the code base spells one of these strings; import them from here
(`from llmq.schemas import names`: `names.jobs_subject`, `names.tenant_key`).
"""

from llmq.schemas.names.keys import *  # noqa: F403
from llmq.schemas.names.subjects import *  # noqa: F403
