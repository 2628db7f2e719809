"""Async jobs and the OpenAI Batch API on JetStream: durable, restart-safe, exactly once.

One job per module:

- `records`: the stored records (jobs, batches, files, results) and their OpenAI views;
- `jsonl`: batch input lines in, output and error lines out (pure);
- `files`: `/v1/files` bytes in the object store, records in a KV bucket;
- `collector`: stores the first result of every async/batch job (shared by api replicas);
- `async_jobs`: `/v1/jobs`: submit, read, list, cancel, expire;
- `store`: the batch records (LLMQ_BATCHES), for the api and the runner alike;
- `lease`: which replica runs a batch: take, renew, hand back;
- `runner`: every replica's supervisor: takes the batches whose lease ran out, runs them;
- `run`: one batch while its lease is held: its state and the loop over its phases,
  `validate` (check the input lines), `dispatch` (queue the lines, follow their results)
  and `finalize` (wind down, build the output and error files, the final status);
- `webhooks`: signed, retried webhook deliveries;
- `ports`: what the api plugs in (request preparation, quota reservations).

docs/batch.md describes the design.
"""
