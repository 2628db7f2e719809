"""The worker's HTTP side towards model servers, behind a seam of llmq's own.

`client` is the seam: the `UpstreamClient` protocol and llmq's transport error types. Two
implementations translate their library's failures into those types (`httpx_client`,
`fast_client`); `choice` is the one module that names them. Around the seam, one concern a
module: `calls` (one upstream call with its deadlines), `timeouts` (the deadline clock),
`error_mapping` (upstream failure -> OpenAI error and status), `sse` and `ndjson` (stream
formats), `usage` (the token tally). Backends import from here and never from a library.
"""
