"""``GET /metrics``: Prometheus text from a real HQ, counting what really happened, never naming anyone."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import socketio
from prometheus_client.parser import text_string_to_metric_families

from hq.ops.metrics import OTHER, Metrics, bounded

from .sio import RecordingClient
from .support import PASSWORD, HQServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(hq: HQServer, accept: str | None = None) -> tuple[str, str]:
    """The metrics body and its content type."""
    request = urllib.request.Request(f"{hq.url}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


def samples(hq: HQServer) -> Samples:
    """Every sample as ``{(name, sorted labels): value}``."""
    text, _ = scrape(hq)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(all_samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Counts:
    """Sample values relative to a baseline, so tests can share one server."""

    def __init__(self, hq: HQServer) -> None:
        self.hq = hq
        self.baseline = samples(hq)
        self.now = self.baseline

    def scrape(self) -> "Counts":
        self.now = samples(self.hq)
        return self

    def __call__(self, name: str, **labels: str) -> float:
        """How much ``name{labels}`` grew since the baseline (the gauge: its current value)."""
        base = 0.0 if name == "hq_connections_live" else value(self.baseline, name, **labels)
        return value(self.now, name, **labels) - base

    async def wait(self, name: str, expected: float, timeout: float = 10, **labels: str) -> "Counts":
        """Scrape until ``name{labels}`` reaches ``expected`` (metrics follow events asynchronously)."""
        deadline = time.monotonic() + timeout
        while self.scrape()(name, **labels) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} is {self(name, **labels)}, expected {expected}")
            await asyncio.sleep(0.05)
        return self


def failed_login(hq: HQServer, codename: str, password: str) -> int:
    try:
        hq.login(codename, password)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    raise AssertionError("login should have failed")


def refresh_body(hq: HQServer, refresh_token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{hq.url}/api/auth/refresh", method="POST",
                                     data=json.dumps({"refresh_token": refresh_token}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def refresh(hq: HQServer, refresh_token: str) -> int:
    request = urllib.request.Request(f"{hq.url}/api/auth/refresh", method="POST",
                                     data=json.dumps({"refresh_token": refresh_token}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
        return 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def logout(hq: HQServer, token: str) -> None:
    request = urllib.request.Request(f"{hq.url}/api/auth/logout", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    urllib.request.urlopen(request, timeout=10).close()


async def test_metrics_is_prometheus_text_with_every_metric(shared_hq: HQServer) -> None:
    text, content_type = scrape(shared_hq)
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["hq_connections_live"] == "gauge"
    assert families["hq_event_duration_seconds"] == "histogram"
    for counter in ("hq_connections_accepted", "hq_connections_refused", "hq_connections_ended", "hq_logins",
                    "hq_token_refreshes", "hq_sessions_revoked", "hq_sessions_ended", "hq_messages", "hq_events",
                    "hq_rate_limit_hits"):
        assert families[counter] == "counter", counter
    # Known series exist before anything happened.
    now = samples(shared_hq)
    assert ("hq_messages_total", (("channel", "missions"),)) in now
    assert ("hq_logins_total", (("outcome", "success"),)) in now


async def test_openmetrics_when_asked(shared_hq: HQServer) -> None:
    text, content_type = scrape(shared_hq, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


async def test_logins_connections_messages_and_events_are_counted(shared_hq: HQServer) -> None:
    hq = shared_hq
    counts = Counts(hq)
    assert failed_login(hq, "fox", "not the password at all") == 401
    assert failed_login(hq, "nobody-here", PASSWORD) == 401
    fox = hq.login("fox")["access_token"]
    hank = hq.login("hank")["access_token"]
    await counts.wait("hq_logins_total", 2, outcome="success")
    assert counts("hq_logins_total", outcome="invalid_credentials") == 2

    listener = await RecordingClient().connect(hq.url, fox, transports=["websocket"])
    # (polling is counted too, see the browser tests; python-engineio's polling client takes ~30 s to close)
    sender = await RecordingClient().connect(hq.url, hank, transports=["websocket"])
    await counts.wait("hq_connections_live", 2)
    assert counts("hq_connections_accepted_total", transport="websocket") == 2

    assert (await listener.call("join", {"channel": "missions"}))["ok"]
    assert (await listener.call("join", {"channel": "hq"}))["error"]["code"] == "forbidden"
    for n in range(3):
        assert (await sender.call("message", {"channel": "missions", "text": f"order {n}"}))["ok"]
    assert (await sender.call("message", {"channel": "hq", "text": "status"}))["ok"]
    await listener.wait_for("message", count=3)
    await counts.wait("hq_messages_total", 3, channel="missions")
    assert counts("hq_messages_total", channel="hq") == 1
    assert counts("hq_events_total", event="message", outcome="ok") == 4
    assert counts("hq_events_total", event="join", outcome="ok") == 1
    assert counts("hq_events_total", event="join", outcome="forbidden") == 1
    assert counts("hq_event_duration_seconds_count", event="message") == 4
    assert counts("hq_event_duration_seconds_bucket", event="message", le="+Inf") == 4
    assert counts("hq_event_duration_seconds_sum", event="message") > 0

    await listener.close()
    await sender.close()
    await counts.wait("hq_connections_live", 0)
    ended = sum(v for (name, _), v in counts.now.items() if name == "hq_connections_ended_total") - sum(
        v for (name, _), v in counts.baseline.items() if name == "hq_connections_ended_total")
    assert ended == 2


async def test_refusals_by_code(shared_hq: HQServer) -> None:
    counts = Counts(shared_hq)
    for token, code in ((None, "token_missing"), ("not-a-token", "token_invalid")):
        client = RecordingClient()
        try:
            await client.connect(shared_hq.url, token)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            raise AssertionError("connection should have been refused")
        finally:
            await client.close()
        assert client.connect_error["data"] == {"code": code}
    counts.scrape()
    assert counts("hq_connections_refused_total", code="token_missing") == 1
    assert counts("hq_connections_refused_total", code="token_invalid") == 1
    assert counts("hq_connections_live") == 0


async def test_logout_counts_a_revocation_and_an_ended_session(shared_hq: HQServer) -> None:
    counts = Counts(shared_hq)
    pair = shared_hq.login("fox")
    client = await RecordingClient().connect(shared_hq.url, pair["access_token"])
    logout(shared_hq, pair["access_token"])
    assert (await client.wait_for("session_ended"))[0] == {"reason": "logged_out"}
    await counts.wait("hq_connections_ended_total", 1, reason="logged_out")
    assert counts("hq_sessions_revoked_total", reason="logged_out") == 1
    assert counts("hq_sessions_ended_total", reason="logged_out") == 1
    await client.close()


async def test_refreshes_are_counted_by_outcome(shared_hq: HQServer) -> None:
    counts = Counts(shared_hq)
    first = shared_hq.login("fox")["refresh_token"]
    assert refresh(shared_hq, first) == 200
    second = refresh_body(shared_hq, first)["refresh_token"]  # a retry within the grace window: a pair
    assert refresh(shared_hq, second) == 200  # the newest token used: the retry window is over
    assert refresh(shared_hq, first) == 401  # reuse: the session is revoked
    counts.scrape()
    assert counts("hq_token_refreshes_total", outcome="success") == 3
    assert counts("hq_token_refreshes_total", outcome="token_reused") == 1


async def test_labels_never_carry_codenames_or_tokens(shared_hq: HQServer) -> None:
    hq = shared_hq
    hq.add_agent("Zebediah-Q", "handler")
    pair = hq.login("Zebediah-Q")
    failed_login(hq, "Unheard-Of-Agent", "Hunter2-secret-pass")
    client = await RecordingClient().connect(hq.url, pair["access_token"])
    await client.call("message", {"channel": "missions", "text": "Zebediah reporting"})
    await client.call("message", {"channel": "no-such-channel", "text": "x"})
    await client.call("join", {"channel": "Zebediah-private"})
    logout(hq, pair["access_token"])
    await client.wait_for("session_ended")
    await client.close()
    text, _ = scrape(hq)
    for secret in ("Zebediah", "zebediah", "Unheard", "Hunter2", pair["access_token"][-20:],
                   pair["refresh_token"][:20], "no-such-channel"):
        assert secret not in text, secret


async def test_event_and_login_rate_limits_are_counted(hq_factory) -> None:
    hq = hq_factory(agents={"fox": "field-operative", "hank": "handler"},
                    limits={"events_per_second": 0.5, "events_burst": 3, "login_failures_per_codename": 2})
    counts = Counts(hq)
    client = await RecordingClient().connect(hq.url, hq.login("fox")["access_token"])
    answers = [await client.call("history", {"channel": "missions"}) for _ in range(6)]
    limited = sum(1 for a in answers if not a["ok"] and a["error"]["code"] == "rate_limited")
    assert limited >= 2
    for _ in range(3):
        failed_login(hq, "hank", "wrong password, again")
    counts.scrape()
    assert counts("hq_rate_limit_hits_total", limit="events") == limited
    assert counts("hq_events_total", event="history", outcome="rate_limited") == limited
    assert counts("hq_rate_limit_hits_total", limit="login") == 1
    assert counts("hq_logins_total", outcome="too_many_attempts") == 1
    await client.close()


def test_each_app_has_its_own_registry_and_labels_are_bounded() -> None:
    first, second = Metrics(["missions"], lambda: 3), Metrics(["missions"], lambda: 5)
    first.message_stored("missions")
    first.message_stored("a-codename-or-anything")
    first.audit_event("connection_refused", {"code": "eyJhbGciOiJIUzI1NiJ9.secret", "codename": "fox"})
    first.audit_event("connection_ended", {"reason": "fox said bye"})
    first.event_handled("not-an-event", 0.01, "made-up")
    body_one, _ = first.exposition()
    body_two, _ = second.exposition()
    assert b'hq_messages_total{channel="missions"} 1.0' in body_one
    assert b'hq_messages_total{channel="other"} 1.0' in body_one
    assert b'hq_connections_refused_total{code="other"} 1.0' in body_one
    assert b'hq_connections_ended_total{reason="other"} 1.0' in body_one
    assert b'hq_events_total{event="other",outcome="other"} 1.0' in body_one
    assert b"hq_connections_live 3.0" in body_one and b"hq_connections_live 5.0" in body_two
    assert b'hq_messages_total{channel="missions"} 0.0' in body_two
    for leaked in (b"eyJ", b"fox", b"a-codename", b"made-up"):
        assert leaked not in body_one
    assert bounded("missions", {"missions"}) == "missions" and bounded(42, {"missions"}) == OTHER
