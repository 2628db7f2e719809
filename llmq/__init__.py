"""llmq: an OpenAI-compatible LLM gateway on a NATS JetStream job queue.

The distribution installs four rooms under this one namespace, each a folder at the top of the
repository (`llmq/api` etc. are links to them): `llmq.api` (the HTTP process),
`llmq.worker` (the backend process), `llmq.dispatcher` (the queue both use) and
`llmq.schemas` (the wire both speak). This package itself holds the `llmq` command line.
"""

__version__ = "0.1.0"
