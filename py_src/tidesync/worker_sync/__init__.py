"""tidesync.worker_sync."""
