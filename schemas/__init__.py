"""Wire types and names shared by the api, dispatcher and worker. No I/O here."""
