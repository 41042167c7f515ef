"""The one place tidesync touches Pyodide's FFI: proxies and JS<->Python values.

Every JS callback tidesync hands to the browser is made here with
``create_proxy`` and recorded, and destroyed here when its owner is done, so a
proxy leak shows up as a growing ``live_proxy_count()`` (tests check it stays
flat over thousands of messages and reconnects).  Imported only inside Pyodide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsProxy, create_proxy, to_js  # type: ignore[import-not-found]

__all__ = [
    "ProxyGroup",
    "from_js",
    "live_proxy_count",
    "text_or_js",
    "to_js_value",
]

_live = 0


def live_proxy_count() -> int:
    """How many proxies tidesync has created and not yet destroyed."""
    return _live


class ProxyGroup:
    """Proxies that live and die together (one socket, one port, one worker)."""

    def __init__(self) -> None:
        self._proxies: list[Any] = []

    def proxy(self, fn: Callable[..., Any]) -> Any:
        global _live
        handle = create_proxy(fn)
        self._proxies.append(handle)
        _live += 1
        return handle

    def destroy(self) -> None:
        global _live
        while self._proxies:
            handle = self._proxies.pop()
            with contextlib.suppress(Exception):  # already destroyed by its owner
                handle.destroy()
            _live -= 1


def to_js_value(value: Any) -> Any:
    """Python dicts/lists -> plain JS objects/arrays (structured-clone friendly)."""
    return to_js(value, dict_converter=js.Object.fromEntries)


def from_js(value: Any) -> Any:
    """A JS value (``MessageEvent.data``) -> Python dicts/lists/scalars."""
    if isinstance(value, JsProxy):
        return value.to_py()
    return value


def text_or_js(message: Any, text: str | None) -> Any:
    """What to post: ``text`` (the message as exact JSON) when there is one, else ``message``
    converted to JS objects (bytes, NaN, integers JSON would not carry exactly)."""
    return text if text is not None else to_js_value(message)
