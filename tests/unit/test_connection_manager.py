"""ConnectionManager: reconnect timing, heartbeats, dead peer, close codes, offline toggle."""

from __future__ import annotations

import random

import pytest

from tidesync.worker_sync.worker_thread.connection_manager import (
    TRANSITIONS,
    BackoffPolicy,
    CloseSocket,
    ConnectionManager,
    ConnectionState,
    ConnectionStateError,
    OpenSocket,
    SendHeartbeat,
    SessionEnded,
)

S = ConnectionState


def make(random: float = 1.0, interval: float = 5.0) -> ConnectionManager:
    return ConnectionManager(heartbeat_interval=interval, random=lambda: random)


def open_at(cm: ConnectionManager, now: float) -> None:
    assert cm.connect_requested(now) == [OpenSocket(cm.attempt)]
    assert cm.opened(now) == []


def test_connect_request_opens_a_socket_and_opened_makes_it_open() -> None:
    cm = make()
    assert cm.connect_requested(0.0) == [OpenSocket(0)]
    assert cm.state is S.CONNECTING and not cm.connected
    cm.opened(0.1)
    assert cm.state is S.OPEN and cm.connected


def test_heartbeat_is_sent_every_interval_while_frames_arrive() -> None:
    cm = make(interval=5.0)
    open_at(cm, 0.0)
    assert cm.next_deadline() == 5.0
    assert cm.tick(4.9) == []
    sent = 0
    for second in range(5, 61):
        cm.frame_received(second - 0.5)
        sent += cm.tick(float(second)).count(SendHeartbeat())
    assert sent == 12
    assert cm.state is S.OPEN


def test_any_frame_resets_the_dead_peer_timer() -> None:
    cm = make(interval=1.0)
    open_at(cm, 0.0)
    cm.frame_received(2.5)
    assert cm.tick(3.0) == [SendHeartbeat()]
    assert cm.state is S.OPEN
    assert cm.next_deadline() == 4.0


def test_peer_silent_for_three_intervals_closes_and_backs_off() -> None:
    cm = make(interval=1.0)
    open_at(cm, 0.0)
    cm.tick(1.0)
    cm.tick(2.0)
    actions = cm.tick(3.0)
    assert isinstance(actions[0], CloseSocket) and actions[0].code == 4000
    assert isinstance(actions[1], SessionEnded)
    assert cm.state is S.BACKOFF
    assert cm.reconnect_in(3.0) is not None


def test_reconnect_delays_grow_exponentially_and_are_capped() -> None:
    cm = make(random=1.0)
    now = 0.0
    delays = []
    cm.connect_requested(now)
    for _ in range(10):
        cm.failed(now, "refused")
        deadline = cm.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        now = deadline
        assert cm.tick(now) == [OpenSocket(cm.attempt)]
    assert delays[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert max(delays) == 30.0


def test_jitter_keeps_delay_between_half_and_full_ceiling() -> None:
    low, high = make(random=0.0), make(random=1.0)
    for cm in (low, high):
        cm.connect_requested(0.0)
        for _ in range(3):
            cm.failed(0.0, "refused")
            cm.tick(100.0)
    low.failed(100.0, "refused")
    high.failed(100.0, "refused")
    assert low.reconnect_in(100.0) == 2.0  # ceiling 4.0 at attempt 3, halved
    assert high.reconnect_in(100.0) == 4.0


def test_backoff_does_not_fire_before_its_deadline() -> None:
    cm = make(random=1.0)
    cm.connect_requested(0.0)
    cm.failed(0.0, "refused")
    assert cm.tick(0.49) == []
    assert cm.reconnect_in(0.25) == 0.25
    assert cm.tick(0.5) == [OpenSocket(1)]


def test_attempts_reset_after_a_connection_that_stayed_healthy() -> None:
    cm = ConnectionManager(
        heartbeat_interval=100.0, backoff=BackoffPolicy(healthy_after=10.0), random=lambda: 1.0
    )
    cm.connect_requested(0.0)
    for _ in range(4):
        cm.failed(0.0, "refused")
        cm.tick(1000.0)
    cm.opened(1000.0)
    cm.closed(1020.0, 1001, "going away")
    assert cm.reconnect_in(1020.0) == 0.5


def test_a_connection_dropped_quickly_keeps_growing_the_backoff() -> None:
    cm = make(random=1.0, interval=100.0)
    cm.connect_requested(0.0)
    cm.failed(0.0, "refused")
    cm.tick(10.0)
    cm.opened(10.0)
    cm.closed(11.0, 1006, "")
    assert cm.reconnect_in(11.0) == 1.0


@pytest.mark.parametrize("code", [4400, 4401, 4403])
def test_auth_and_protocol_close_codes_back_off_long_and_surface_the_error(code: int) -> None:
    cm = make()
    open_at(cm, 0.0)
    actions = cm.closed(1.0, code, "no")
    assert actions == [SessionEnded(code, "no")]
    assert cm.state is S.BACKOFF
    assert cm.reconnect_in(1.0) == 60.0
    assert cm.last_error is not None and str(code) in cm.last_error


def test_replaced_connection_stops_reconnecting_until_asked() -> None:
    cm = make()
    open_at(cm, 0.0)
    assert cm.closed(1.0, 4409, "replaced") == [SessionEnded(4409, "replaced")]
    assert cm.state is S.DISCONNECTED
    assert cm.next_deadline() is None
    assert cm.tick(1000.0) == []
    assert cm.last_error is not None and "4409" in cm.last_error
    assert cm.connect_requested(1001.0) == [OpenSocket(cm.attempt)]


def test_connect_timeout_ends_the_attempt_and_backs_off() -> None:
    cm = ConnectionManager(heartbeat_interval=1.0, connect_timeout=2.0, random=lambda: 1.0)
    cm.connect_requested(0.0)
    assert cm.tick(1.9) == []
    actions = cm.tick(2.0)
    assert [type(a) for a in actions] == [CloseSocket, SessionEnded]
    assert cm.state is S.BACKOFF


def test_going_offline_closes_and_stays_offline_until_online() -> None:
    cm = make()
    open_at(cm, 0.0)
    actions = cm.set_online(1.0, False)
    assert [type(a) for a in actions] == [CloseSocket, SessionEnded]
    assert cm.state is S.OFFLINE and cm.next_deadline() is None
    assert cm.tick(500.0) == []
    assert cm.connect_requested(500.0) == []
    assert cm.closed(500.0, 1000, "late close of the old socket") == []
    assert cm.set_online(501.0, True) == [OpenSocket(0)]


def test_going_offline_during_backoff_cancels_the_retry() -> None:
    cm = make()
    cm.connect_requested(0.0)
    cm.failed(0.0, "refused")
    assert cm.set_online(0.1, False) == []
    assert cm.state is S.OFFLINE and cm.reconnect_in(0.1) is None


def test_restart_reconnects_at_once_without_backoff() -> None:
    cm = make()
    open_at(cm, 0.0)
    actions = cm.restart(1.0, "reinit")
    assert [type(a) for a in actions] == [CloseSocket, SessionEnded, OpenSocket]
    assert cm.state is S.CONNECTING


def test_stop_is_terminal() -> None:
    cm = make()
    open_at(cm, 0.0)
    assert [type(a) for a in cm.stop(1.0)] == [CloseSocket, SessionEnded]
    assert cm.state is S.STOPPED
    assert cm.tick(100.0) == [] and cm.set_online(100.0, True) == []
    with pytest.raises(ConnectionStateError, match="connect_requested"):
        cm.connect_requested(100.0)


def test_opened_twice_is_a_driver_bug_named_in_the_error() -> None:
    cm = make()
    open_at(cm, 0.0)
    with pytest.raises(ConnectionStateError, match=r"opened.*open"):
        cm.opened(1.0)


def test_every_session_ends_exactly_once_under_random_events() -> None:
    rng = random.Random(7)
    cm = ConnectionManager(heartbeat_interval=1.0, random=rng.random)
    sessions = 0  # sockets asked for and not yet ended
    now = 0.0
    for _ in range(2000):
        now += rng.random() * 2
        state = cm.state
        choice = rng.randrange(6)
        if choice == 0 and state is not S.STOPPED:
            actions = cm.connect_requested(now)
        elif choice == 1 and state is S.CONNECTING:
            actions = cm.opened(now)
        elif choice == 2:
            actions = cm.closed(now, rng.choice([1000, 1001, 1006, 4401, 4409]), "")
        elif choice == 3:
            actions = cm.set_online(now, rng.random() < 0.7)
        elif choice == 4 and state is S.OPEN:
            actions = cm.frame_received(now)
        else:
            actions = cm.tick(now)
        for action in actions:
            if isinstance(action, OpenSocket):
                assert sessions == 0
                sessions = 1
            elif isinstance(action, SessionEnded):
                assert sessions == 1
                sessions = 0
        assert sessions == (1 if cm.state in (S.CONNECTING, S.OPEN) else 0)


def test_table_covers_every_state() -> None:
    states = {state for state, _ in TRANSITIONS}
    assert states == set(ConnectionState)


def test_an_unreachable_server_and_a_lost_connection_show_as_last_error() -> None:
    cm = make()
    cm.connect_requested(0.0)
    cm.failed(0.1, "connection refused")
    assert cm.last_error == "cannot reach the server (connection refused); retrying"
    cm.tick(100.0)
    cm.opened(100.1)
    cm.closed(101.0, 1006, "")
    assert cm.last_error == "connection lost (1006)"
