"""The worker process: pulls jobs for its models from NATS and runs them on one backend."""
