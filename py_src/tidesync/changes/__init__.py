"""tidesync.changes."""
