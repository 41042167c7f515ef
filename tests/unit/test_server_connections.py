"""Which of two connections of one client the server keeps (``app.claim``)."""

from __future__ import annotations

from dataclasses import dataclass

from tidesync.server.app import claim


@dataclass
class Conn:
    order: int


def test_a_newer_connection_replaces_the_registered_one() -> None:
    old, new = Conn(1), Conn(2)
    connections: dict[str, Conn] = {"c1": old}
    assert claim(connections, "c1", new) is old  # closed with 4409
    assert connections == {"c1": new}


def test_an_older_connection_registering_late_gives_way_to_the_newer_one() -> None:
    """Its ``open_session`` finished after the newer one's (a thread each): it must not
    close the connection the client is waiting on."""
    older, newer = Conn(1), Conn(2)
    connections: dict[str, Conn] = {"c1": newer}
    assert claim(connections, "c1", older) is older  # the caller closes this one
    assert connections == {"c1": newer}


def test_the_first_connection_of_a_client_replaces_nothing() -> None:
    connections: dict[str, Conn] = {"other": Conn(5)}
    assert claim(connections, "c1", Conn(1)) is None
    assert set(connections) == {"other", "c1"}
