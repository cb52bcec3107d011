"""For operators: audit log, metrics, access log, the Admin UI, worker processes."""
