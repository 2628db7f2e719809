"""The Responses API and conversations: routes, serving, the relay of one response's events,
stored responses and conversations (docs/responses.md)."""
