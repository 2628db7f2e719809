"""Batch dispatch on JetStream: async jobs and the OpenAI Batch API, durable, restart-safe,
exactly once.

One job per module:

- `records`: the stored records (jobs, batches, files, results) and their OpenAI views;
- `jsonl`: batch input lines in, output and error lines out (pure);
- `files`: `/v1/files` bytes in the object store, records in a KV bucket;
- `collector` + `consume`: store the first result of every async/batch job (shared by api
  replicas);
- `async_jobs`: `/v1/jobs`: submit, read, list, cancel, expire;
- `store`: the batch records (LLMQ_BATCHES), for the api and the supervisor alike;
- `lease`: which replica runs a batch: take, renew, hand back;
- `supervisor`: every replica's supervisor: takes the batches whose lease ran out, runs them;
- `run`: one batch's state while its lease is held; `phases` runs its phases in turn:
  `validate` (check the input lines), `progress` (queue the lines, follow their results)
  and `finalize` (wind down, build the output and error files, the final status), all
  reading the input through `batch_input`;
- `ports`: what the api plugs in (request preparation, quota reservations, webhooks).

The api's side (routes, serving, webhooks and their egress checks) is `llmq.api.batch`;
docs/batch.md describes the design.
"""
