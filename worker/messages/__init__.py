"""Anthropic Messages jobs (kind `message`): passed through to an `anthropic` upstream, or
translated to chat and back for every other backend (docs/anthropic.md)."""
