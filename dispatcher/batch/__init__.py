"""Async jobs and the OpenAI Batch API on JetStream: durable, restart-safe, exactly once.

One job per module:

- `records`: the stored records (jobs, batches, files, results) and their OpenAI views;
- `kv`: compare-and-set, create-once and following a KV bucket;
- `jsonl`: batch input lines in, output and error lines out (pure);
- `files`: `/v1/files` bytes in the object store, records in a KV bucket;
- `collector`: stores the first result of every async/batch job (shared by api replicas);
- `async_jobs`: `/v1/jobs`: submit, read, list, cancel, expire;
- `runner`: `/v1/batches`: leases, validation, dispatch, progress, finalization;
- `webhooks`: signed, retried webhook deliveries;
- `ports`: what the api plugs in (request preparation, quota accounting).

docs/batch.md describes the design.
"""
