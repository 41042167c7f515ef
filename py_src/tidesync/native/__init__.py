"""tidesync.native."""
