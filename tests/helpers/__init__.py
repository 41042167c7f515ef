"""Test helpers shared by the suites (``server_process``: the real server as a subprocess)."""
