"""The queue: everything api and worker share to meet on NATS.

Connection and provisioning, streams and consumers, KV helpers, the micro-service base, task
helpers, publishing jobs, the reply inbox, cancel and the worker registry view. The batch
runner lives in `llmq.dispatcher.batch`; nothing outside it imports it but the api and the
command line.
"""
