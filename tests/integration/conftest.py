"""Fixtures of the integration suites beyond the server ones in tests/conftest.py.

* ``proxy_to(server)``: a ``TcpProxy`` (tests/helpers/tcp_proxy.py) in front of
  a running server, to reset, stall or tear its connections; every proxy is
  closed at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from tests.helpers.server_process import ServerHandle
from tests.helpers.tcp_proxy import TcpProxy

ProxyTo = Callable[[ServerHandle], Awaitable[TcpProxy]]


@pytest.fixture
async def proxy_to() -> AsyncIterator[ProxyTo]:
    proxies: list[TcpProxy] = []

    async def make(server: ServerHandle) -> TcpProxy:
        proxy = await TcpProxy(server.port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()
