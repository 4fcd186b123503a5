"""Check-in limits for shared connections (issue 12): only successful check-ins count, trusted networks have their
own limit (or none), and the refusal says when to try again."""

from __future__ import annotations

import pytest

from server.http.keys import ROOM
from server.settings import ConfigError

from .app_fixtures import make_settings

JOIN = {"consent": True}


async def check_in(client, headers=None, body=None, department="buergerbuero"):
    resp = await client.post(f"/api/departments/{department}/tickets", json=JOIN if body is None else body,
                             headers=headers or {})
    return resp, await resp.json()


async def test_refused_attempts_do_not_count_and_the_refusal_says_when(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(joins_per_address=2, join_window_seconds=600))
    for body in ({}, {"consent": False}, {"consent": True, "language": "xx"}):  # refused: invalid input
        resp, _ = await check_in(client, body=body)
        assert resp.status == 400
    resp, _ = await check_in(client, department="standesamt")  # refused: closed
    assert resp.status == 409
    resp, first = await check_in(client)
    assert resp.status == 201
    resp, _ = await check_in(client, headers={"Authorization": f"Bearer {first['token']}"})  # already waiting
    assert (resp.status, _["error"]["code"]) == (409, "already_queued")
    resp, _ = await check_in(client)
    assert resp.status == 201  # the second successful one: the refusals above did not count

    resp, body = await check_in(client)
    error = body["error"]
    assert (resp.status, error["code"]) == (429, "rate_limited")
    assert 590 <= error["retry_after"] <= 600
    assert resp.headers["Retry-After"] == str(error["retry_after"])


async def test_a_trusted_network_is_not_limited(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(joins_per_address=1, join_trusted_networks=["127.0.0.0/8", "::1"]))
    for _ in range(5):  # the town hall's kiosk: one address, many citizens
        resp, _ = await check_in(client)
        assert resp.status == 201


async def test_a_trusted_network_may_have_a_higher_limit(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(joins_per_address=1, join_trusted_networks=["127.0.0.1", "::1"],
                                           joins_per_trusted_address=3))
    for _ in range(3):
        resp, _ = await check_in(client)
        assert resp.status == 201
    resp, body = await check_in(client)
    assert (resp.status, body["error"]["code"]) == (429, "rate_limited") and body["error"]["retry_after"] > 0


async def test_trusted_networks_behind_a_proxy_use_the_forwarded_address(make_app, aiohttp_client):
    client = await aiohttp_client(make_app(joins_per_address=1, trust_forwarded_for=True,
                                           join_trusted_networks=["10.0.0.0/8"]))
    library = {"X-Forwarded-For": "10.20.30.40"}
    for _ in range(3):
        resp, _ = await check_in(client, headers=library)
        assert resp.status == 201
    stranger = {"X-Forwarded-For": "192.0.2.7"}
    assert (await check_in(client, headers=stranger))[0].status == 201
    assert (await check_in(client, headers=stranger))[0].status == 429


@pytest.mark.parametrize(("value", "message"), [
    (["10.0.0.1/8"], "join_trusted_networks: '10.0.0.1/8'"),
    ("10.0.0.0/8", "join_trusted_networks has the wrong type"),
    (["library"], "is not an address or network"),
])
def test_trusted_networks_are_validated(value, message):
    with pytest.raises(ConfigError, match=message):
        make_settings(join_trusted_networks=value)


def test_a_negative_trusted_limit_is_refused():
    with pytest.raises(ConfigError, match="joins_per_trusted_address"):
        make_settings(joins_per_trusted_address=-1)
    assert make_settings(join_trusted_networks=["10.0.0.0/8", "fd00::/8"]).join_trusted_networks == (
        "10.0.0.0/8", "fd00::/8")


async def test_a_closed_department_is_said_before_the_limit_and_costs_nothing(make_app, aiohttp_client):
    app = make_app(joins_per_address=2, join_window_seconds=600)
    client = await aiohttp_client(app)
    store = app[ROOM].store

    async def seq(body):
        return (await store.get_ticket(body["ticket"]["id"])).seq

    resp, first = await check_in(client)
    assert resp.status == 201
    resp, body = await check_in(client, department="standesamt")
    assert (resp.status, body["error"]["code"]) == (409, "department_closed")
    resp, second = await check_in(client)
    assert resp.status == 201 and await seq(second) == await seq(first) + 1  # the refusal took no number
    assert await store.count("join:127.0.0.1") == 2

    resp, body = await check_in(client, department="standesamt")  # limited now: still told it is closed
    assert (resp.status, body["error"]["code"]) == (409, "department_closed")
    resp, body = await check_in(client, body={"consent": False})  # and bad input is named as such
    assert (resp.status, body["error"]["code"]) == (400, "invalid_input")
    resp, body = await check_in(client)
    assert (resp.status, body["error"]["code"]) == (429, "rate_limited")
    assert await store.count("join:127.0.0.1") == 2
