"""The exact response cache per tenant, and identical requests in flight joined on one job
(docs/cache.md): `policy` (what is cacheable, the key, the TTL), `store` (Valkey, bounded
per tenant, sealed at rest), `replay` (a stored answer as SSE or JSON), `flights` (the
running jobs identical requests join), `service` (the engine's `Reuse`, plugged in by the
app)."""
