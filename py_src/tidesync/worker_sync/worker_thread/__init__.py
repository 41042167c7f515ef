"""tidesync.worker_sync.worker_thread."""
