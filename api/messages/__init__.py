"""Anthropic's Messages API in front (`/v1/messages`, `/v1/messages/count_tokens`):
routes → serving (+ counting, relay) → protocol. docs/anthropic.md."""
