"""The queue and nothing else: connection and credentials, streams and consumers, KV, the
micro-service base, task helpers, publishing a job and following its frames, pulling and
replying, cancel, and the worker registry view. Batch dispatch lives in
`llmq.dispatcher.batch`; a feature's own stores and checks live with the feature
(docs/architecture.md states the rule; tests/test_architecture.py checks it).
"""
