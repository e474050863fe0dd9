"""Dashboard session cookies: only an unexpired, unrevoked cookie signed under the current master key is accepted;
anything else (tampered, expired, logged out, signed under another key, malformed) is refused without raising."""

from __future__ import annotations

import pytest

from gateway.ui.session import DashboardSessions

KEY = "mk-session-test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_issued_cookie_is_accepted_and_holds_no_key() -> None:
    sessions = DashboardSessions()
    token = sessions.issue(KEY)
    assert sessions.valid(token, KEY)
    assert KEY not in token


def test_a_tampered_cookie_is_refused() -> None:
    sessions = DashboardSessions()
    expiry, nonce, signature = sessions.issue(KEY).split(".")
    assert not sessions.valid(f"{int(expiry) + 3600}.{nonce}.{signature}", KEY)  # a longer life
    assert not sessions.valid(f"{expiry}.other.{signature}", KEY)
    assert not sessions.valid(f"{expiry}.{nonce}.{'0' * len(signature)}", KEY)


def test_a_cookie_expires_after_its_lifetime() -> None:
    clock = Clock()
    sessions = DashboardSessions(lifetime_s=60, clock=clock)
    token = sessions.issue(KEY)
    clock.now += 59
    assert sessions.valid(token, KEY)
    clock.now += 2
    assert not sessions.valid(token, KEY)


def test_changing_the_master_key_ends_every_session() -> None:
    sessions = DashboardSessions()
    token = sessions.issue(KEY)
    assert not sessions.valid(token, KEY + "-rotated")
    assert not sessions.valid(token, None)


def test_logout_revokes_that_cookie_only() -> None:
    sessions = DashboardSessions()
    first, second = sessions.issue(KEY), sessions.issue(KEY)
    sessions.revoke(first)
    assert not sessions.valid(first, KEY)
    assert sessions.valid(second, KEY)


@pytest.mark.parametrize("token", [None, "", ".", "..", "abc", "1.2", "x.y.z", "9" * 300, "1.\x00.ff", "-5.n.s"])
def test_malformed_cookies_are_refused_without_raising(token: str | None) -> None:
    sessions = DashboardSessions()
    assert not sessions.valid(token, KEY)
    sessions.revoke(token)  # nothing to revoke, nothing raised
