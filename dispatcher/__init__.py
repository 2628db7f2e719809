"""Everything that talks NATS for the api side: streams, publishing, the reply inbox,
cancel, the worker registry view."""
