"""Reading data in browser tests: through a page's ``window.db`` and from the server's file."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

__all__ = ["page_query", "server_rows"]


def page_query(page: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a query run through the page API (``window.db``) of a page."""
    return page.evaluate("([s, p]) => db.query(s, p)", [sql, params or []])


def server_rows(server: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on the server's own database file."""
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        return conn.execute(sql, params).fetchall()
