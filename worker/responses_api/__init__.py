"""Serving Responses API jobs on a worker: translate to chat and back (`to_chat`, `events`),
or hand the request to an upstream that serves `/v1/responses` itself (`passthrough`)."""
