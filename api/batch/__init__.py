"""Async jobs, files and the Batch API as the api serves them: routes, serving, the wing that
starts them, webhook deliveries and their egress checks (docs/batch.md). Running a batch's
lines is the queue's (`llmq.dispatcher.batch`)."""
