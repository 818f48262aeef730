"""Operating a running server: the admin API, its client, runtime files, log dumps, terminal views."""
