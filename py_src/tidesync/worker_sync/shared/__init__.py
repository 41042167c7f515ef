"""tidesync.worker_sync.shared."""
