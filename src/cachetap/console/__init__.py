"""The operator console: a live dashboard and the admin API, an ASGI app of its own (`cachetap console`)."""
