"""``python -m tidesync serve ...``: the same command line as the ``tidesync`` script."""

from __future__ import annotations

from tidesync.cli import main

raise SystemExit(main())
