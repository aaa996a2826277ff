"""Background workers that consume Postroom's queues (``python -m workers <name>``)."""
