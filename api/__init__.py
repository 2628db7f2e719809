"""The stateless HTTP api: routes, auth, tenants and quotas, the SSE relay, admin."""
