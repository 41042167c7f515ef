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
    "UTF8_ARGS",
    "ProxyGroup",
    "from_js",
    "live_proxy_count",
    "post_with_utf8",
    "read_utf8_carrier",
    "text_or_js",
    "to_js_value",
]

#: Arguments of a channel message that may hold a large JSON text (a snapshot chunk, a
#: batch of changes): they cross between the workers as UTF-8 bytes (``post_with_utf8``).
UTF8_ARGS = frozenset({"changes_json"})
#: Below this many characters the text rides inside the message's own JSON as before.
_UTF8_MIN_CHARS = 4096

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


def post_with_utf8(
    post: Callable[..., Any], message: dict[str, Any], encode: Callable[[Any], str | None]
) -> bool:
    """Post ``message`` with its large ``UTF8_ARGS`` text beside it as transferred bytes.

    Why: Pyodide converts a JS string to Python one UTF-16 unit at a time in JavaScript
    (~15 ns a character, ~4 ms for a 260 KB snapshot chunk) and the text inside the
    message's JSON is escaped and unescaped once more; UTF-8 bytes cross as one copy
    and ``json.loads`` reads them as they are.  The carrier is a plain object
    ``{text, utf8Arg, utf8}``: ``text`` the message's JSON without that argument
    (``encode``), ``utf8`` a Uint8Array of it (its buffer transferred, not copied).
    Returns False (nothing posted) when the message has no such text; the caller posts
    it the usual way then.
    """
    args = message.get("args")
    if not isinstance(args, dict):
        return False
    for key in UTF8_ARGS:
        text = args.get(key)
        if isinstance(text, str) and len(text) >= _UTF8_MIN_CHARS:
            break
    else:
        return False
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only JSON's own escapes can carry it
        return False
    envelope = encode({**message, "args": {k: v for k, v in args.items() if k != key}})
    if envelope is None:
        return False
    payload = js.Uint8Array.new(len(data))
    payload.assign(data)
    carrier = js.Object.new()
    carrier.text = envelope
    carrier.utf8Arg = key
    carrier.utf8 = payload
    post(carrier, to_js([payload.buffer]))
    return True


def read_utf8_carrier(raw: Any) -> tuple[str, str, bytes] | None:
    """``(text, arg, utf8 bytes)`` of a ``post_with_utf8`` carrier, or None for anything else.

    The caller parses ``text`` and puts the bytes back under ``arg`` (one of ``UTF8_ARGS``,
    checked here) for the usual checks; ``json.loads`` takes the bytes as they are.
    """
    if not isinstance(raw, JsProxy):
        return None
    try:
        text, key, payload = raw.text, raw.utf8Arg, raw.utf8
    except AttributeError:
        return None
    if not isinstance(text, str) or key not in UTF8_ARGS or not isinstance(payload, JsProxy):
        return None
    try:
        return text, str(key), bytes(payload.to_bytes())
    except Exception:  # not a typed array
        return None


def text_or_js(message: Any, text: str | None) -> Any:
    """What to post: ``text`` (the message as exact JSON) when there is one, else ``message``
    converted to JS objects (bytes, NaN, integers JSON would not carry exactly)."""
    return text if text is not None else to_js_value(message)
