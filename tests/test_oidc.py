"""Staff single sign-on against a real OpenID provider: panva/oidc-provider on Node (tests/oidc/provider.mjs),
started by these tests on a free port with signing keys generated here.

Full sign-ins go through the provider's pages with an aiohttp client (redirects followed, cookies kept);
the ID-token checks are also fed real tokens from the provider and tokens crafted here, signed with the
provider's own key or with look-alike keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import selectors
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from server.app import create_app
from server.http.auth import Auth
from server.http.keys import AUDIT, AUTH, STORE
from server.http.oidc import FLOW_COOKIE, FLOW_KEY
from server.i18n import DE
from server.oidc import (
    ClaimRule,
    Flow,
    NoRole,
    OidcClient,
    OidcError,
    OidcSettings,
    TokenRejected,
    authorization_url,
    identity_from_claims,
    is_sso_account,
    parse_oidc,
    validate_id_token,
)
from server.queue.errors import NotAuthenticated
from server.settings import ConfigError, settings_from_dict
from server.staff_admin import clean_display_name
from server.store.audit import AuditQuery
from server.store.memory import MemoryStore
from tests.app_fixtures import TEST_CONFIG, free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
NODE = os.environ.get("NODE", "node")

ACCOUNTS: dict[str, dict[str, Any]] = {
    "lead.bauamt": {"preferred_username": "lead.bauamt", "name": "Lena Leitung",
                    "groups": ["sps-bauamt-lead", "kantine"]},
    "clerk.bb": {"preferred_username": "clerk.bb", "name": "Clara Clerk", "groups": ["sps-buergerbuero"],
                 "userinfo_only": ["groups"]},  # groups only from the userinfo endpoint
    "outsider": {"preferred_username": "outsider", "name": "Otto Außen", "groups": ["kantine"]},
    "taken": {"preferred_username": "taken", "name": "Tom Taken", "groups": ["sps-buergerbuero"]},
}
RULES = [
    {"value": "sps-bauamt-lead", "roles": ["clerk", "lead"], "departments": ["bauamt"]},
    {"value": "sps-buergerbuero", "roles": ["clerk"], "departments": ["buergerbuero"]},
    {"value": "sps-admin", "roles": ["admin"]},
]


# -- the provider ------------------------------------------------------------------------------------


@dataclass
class Provider:
    issuer: str
    key: RSAKey
    """The provider's signing key (private), generated here."""
    proc: subprocess.Popen[bytes]
    log: Path
    """Its stderr (warnings, errors)."""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    async def register(self, redirect_uri: str, auth_method: str = "client_secret_basic") -> tuple[str, str]:
        """A new client (dynamic registration): (client_id, client_secret)."""
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.issuer}/reg",
            json={"redirect_uris": [redirect_uri], "token_endpoint_auth_method": auth_method},
        ) as resp:
            assert resp.status == 201, await resp.text()
            body = await resp.json()
        return body["client_id"], body["client_secret"]


def start_provider(workdir: Path) -> Provider:
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/oidc/node_modules is missing: run `make oidc-provider` (or `cd tests/oidc && npm ci`)")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    key = RSAKey.generate_key(2048, parameters={"kid": "provider-1", "use": "sig", "alg": "RS256"})
    config = workdir / f"provider-{port}.json"
    config.write_text(json.dumps({"issuer": issuer, "port": port, "accounts": ACCOUNTS,
                                  "jwks": {"keys": [key.as_dict(private=True)]}}))
    log = workdir / f"provider-{port}.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([NODE, str(OIDC_DIR / "provider.mjs"), str(config)], cwd=OIDC_DIR,
                                stdout=subprocess.PIPE, stderr=stderr)
    provider = Provider(issuer, key, proc, log)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:  # wait for its "ready" line (or its death), not a sleep
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=30):
            provider.stop()
            pytest.fail("the OpenID provider did not start within 30 s")
    line = proc.stdout.readline().decode()
    if not line.startswith("ready"):
        provider.stop()
        pytest.fail(f"the OpenID provider did not start: {line}{log.read_text()}")
    with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=5) as resp:
        assert json.load(resp)["issuer"] == issuer
    return provider


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    started = start_provider(tmp_path_factory.mktemp("oidc"))
    yield started
    started.stop()


# -- the app -------------------------------------------------------------------------------------------


@dataclass
class SsoApp:
    url: str
    app: Any
    client_id: str
    client_secret: str

    @property
    def auth(self) -> Auth:
        return self.app[AUTH]


def sso_settings(tmp_path: Path, issuer: str, client_id: str, secret: str, **oidc: Any) -> Any:
    section = {"issuer": issuer, "client_id": client_id, "client_secret": secret,
               "scopes": ["openid", "profile", "groups"], "claim": "groups", "rules": RULES,
               "timeout_seconds": 2, **oidc}
    server = {**TEST_CONFIG["server"], "data_dir": str(tmp_path / "var")}
    return settings_from_dict({"server": server, "departments": TEST_CONFIG["departments"], "oidc": section})


@pytest.fixture
async def make_sso_app(aiohttp_server, tmp_path: Path):
    async def factory(provider: Provider | None, auth_method: str = "client_secret_basic", issuer: str | None = None,
                      **oidc: Any) -> SsoApp:
        port = free_port()
        callback = f"http://127.0.0.1:{port}/auth/oidc/callback"
        client_id, secret = ("sprechstunde", "s3cret") if provider is None else await provider.register(
            callback, auth_method)
        settings = sso_settings(tmp_path, issuer or (provider.issuer if provider else ""), client_id, secret,
                                token_auth=auth_method, **oidc)
        app = create_app(settings, store=MemoryStore(staff_file=tmp_path / "staff.json"), announce=lambda _: None)
        await aiohttp_server(app, host="127.0.0.1", port=port)
        return SsoApp(f"http://127.0.0.1:{port}", app, client_id, secret)

    return factory


def browser() -> aiohttp.ClientSession:
    """A fresh browser-like client: a cookie jar that keeps cookies of IP-address hosts."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def to_provider_login(http: aiohttp.ClientSession, app_url: str) -> str:
    """Start a sign-in at the app and follow it to the provider's sign-in form; returns the form's URL."""
    async with http.get(f"{app_url}/auth/oidc/login") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.url.path.startswith("/interaction/"), resp.url
        return str(resp.url)


async def callback_url(http: aiohttp.ClientSession, form_url: str, account: str) -> str:
    """Sign ``account`` in at the provider and return the redirect back to the app (not yet followed)."""
    async with http.post(form_url, data={"login": account}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        location = resp.headers["Location"]
    while True:
        async with http.get(location, allow_redirects=False) as resp:
            assert resp.status in (302, 303), await resp.text()
            location = resp.headers["Location"]
        if "/auth/oidc/callback" in location or "://" in location and "code=" in location:
            return location


async def sign_in(app: SsoApp, account: str, http: aiohttp.ClientSession) -> aiohttp.ClientResponse:
    """The whole sign-in as a browser does it; returns the last response (the staff page)."""
    form = await to_provider_login(http, app.url)
    async with http.post(form, data={"login": account}) as resp:
        await resp.read()
        return resp


async def session_of(http: aiohttp.ClientSession, app: SsoApp) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{app.url}/api/session", headers={"Accept": "application/json"}) as resp:
        return resp.status, await resp.json()


def sso_error(resp: aiohttp.ClientResponse) -> str | None:
    assert resp.url.path == "/staff", resp.url
    return resp.url.query.get("sso_error")


async def audit_actions(app: SsoApp) -> list[tuple[str, str, dict[str, Any]]]:
    page = await app.app[AUDIT].query(AuditQuery(limit=100))
    return [(e.action, e.target, dict(e.details)) for e in page.entries]


# -- sign-in end to end ------------------------------------------------------------------------------


async def test_sign_in_maps_groups_to_a_lead_of_one_department(provider, make_sso_app):
    app = await make_sso_app(provider)
    async with browser() as http:
        page = await sign_in(app, "lead.bauamt", http)
        assert page.status == 200 and sso_error(page) is None
        status, body = await session_of(http, app)
        assert status == 200, body
        assert body["clerk"] == {"username": "lead.bauamt", "display_name": "Lena Leitung",
                                 "departments": ["bauamt"], "roles": ["clerk", "lead"]}
        # The session is a staff session like a password login's: the dashboard answers.
        async with http.get(f"{app.url}/api/staff/dashboard") as resp:
            assert resp.status == 200
        # The flow cookie is gone, the flow is used up.
        assert not any(c.key == FLOW_COOKIE and c.value for c in http.cookie_jar)
    account = await app.app[STORE].get_staff("lead.bauamt")
    assert account is not None and is_sso_account(account.password_hash)
    assert (account.roles, account.departments) == (("clerk", "lead"), ("bauamt",))
    # No password opens an account made by single sign-on.
    async with browser() as http, http.post(f"{app.url}/api/session",
                                            json={"username": "lead.bauamt", "password": account.password_hash}) as r:
        assert r.status == 401
    actions = await audit_actions(app)
    assert ("auth.login", "lead.bauamt", {"method": "oidc"}) in actions
    assert any(a == "staff.created" and t == "lead.bauamt" for a, t, _ in actions)


async def test_logs_name_the_username_at_most(provider, make_sso_app, caplog):
    app = await make_sso_app(provider)
    caplog.set_level(logging.DEBUG, logger="sprechstunde")
    for account in ("lead.bauamt", "outsider"):
        async with browser() as http:
            await sign_in(app, account, http)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sprechstunde"))
    assert "SSO sign-in of lead.bauamt" in logged and "outsider" in logged
    for secret in ("Lena Leitung", "Otto", "kantine", "sps-bauamt-lead", app.client_secret):
        assert secret not in logged


async def test_client_secret_post_and_groups_from_userinfo(provider, make_sso_app):
    app = await make_sso_app(provider, auth_method="client_secret_post")
    async with browser() as http:
        page = await sign_in(app, "clerk.bb", http)
        assert sso_error(page) is None
        status, body = await session_of(http, app)
        assert status == 200 and body["clerk"]["roles"] == ["clerk"]
        assert body["clerk"]["departments"] == ["buergerbuero"]


async def test_a_second_sign_in_updates_the_same_account(provider, make_sso_app):
    app = await make_sso_app(provider)
    for _ in range(2):
        async with browser() as http:
            assert sso_error(await sign_in(app, "lead.bauamt", http)) is None
    assert [a.username for a in await app.app[STORE].list_staff()] == ["lead.bauamt"]
    assert [a for a, _, _ in await audit_actions(app)].count("staff.created") == 1


async def test_nobody_without_a_mapped_role_gets_in(provider, make_sso_app):
    app = await make_sso_app(provider)
    async with browser() as http:
        page = await sign_in(app, "outsider", http)
        assert sso_error(page) == "oidc_no_role"
        status, body = await session_of(http, app)
        assert status == 401
    assert await app.app[STORE].get_staff("outsider") is None
    assert ("auth.login_failed", "outsider", {"method": "oidc", "reason": "oidc_no_role"}) in await audit_actions(app)
    # A client that asks for JSON gets the error itself.
    async with browser() as http:
        form = await to_provider_login(http, app.url)
        url = await callback_url(http, form, "outsider")
        async with http.get(url, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "oidc_no_role"


async def test_a_local_account_is_not_taken_over(provider, make_sso_app):
    app = await make_sso_app(provider)
    await app.auth.add_staff("taken", "Local Taken", "correct horse battery", ["bauamt"])
    async with browser() as http:
        assert sso_error(await sign_in(app, "taken", http)) == "oidc_account_conflict"
        assert (await session_of(http, app))[0] == 401
    account = await app.app[STORE].get_staff("taken")
    assert account is not None and not is_sso_account(account.password_hash)
    assert account.departments == ("bauamt",)


async def test_state_must_match_and_a_callback_works_once(provider, make_sso_app):
    app = await make_sso_app(provider)
    async with browser() as http:
        form = await to_provider_login(http, app.url)
        url = await callback_url(http, form, "lead.bauamt")
        query = parse_qs(urlsplit(url).query)
        forged = url.replace(f"state={query['state'][0]}", "state=forged")
        async with http.get(forged) as resp:
            assert sso_error(resp) == "oidc_state"
        # The flow was used up by the forged try: the genuine answer cannot be replayed after it.
        async with http.get(url, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "oidc_state"
        assert (await session_of(http, app))[0] == 401
    async with browser() as http:  # a genuine callback works once
        form = await to_provider_login(http, app.url)
        url = await callback_url(http, form, "lead.bauamt")
        async with http.get(url) as resp:
            assert sso_error(resp) is None
        async with http.get(url) as resp:
            assert sso_error(resp) == "oidc_state"
    async with browser() as http:  # another browser cannot finish someone's sign-in (no flow cookie)
        async with http.get(url, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "oidc_state"


async def test_a_wrong_nonce_is_refused_end_to_end(provider, make_sso_app):
    app = await make_sso_app(provider)
    store = app.app[STORE]
    async with browser() as http:
        form = await to_provider_login(http, app.url)
        flow_id = next(c.value for c in http.cookie_jar if c.key == FLOW_COOKIE)
        flow = await store.get_session(FLOW_KEY + flow_id)
        await store.put_session(FLOW_KEY + flow_id, {**flow, "nonce": "not-the-one-sent"}, 600)
        with pytest.raises(NotAuthenticated):  # a flow kept in the session store is no session
            await app.auth.session(FLOW_KEY + flow_id)
        url = await callback_url(http, form, "lead.bauamt")
        async with http.get(url) as resp:
            assert sso_error(resp) == "oidc_token"
        assert (await session_of(http, app))[0] == 401
    assert ("auth.login_failed", "", {"method": "oidc", "reason": "nonce"}) in await audit_actions(app)


async def test_provider_refusal_is_shown(provider, make_sso_app):
    app = await make_sso_app(provider)
    async with browser() as http:
        await to_provider_login(http, app.url)
        flow_id = next(c.value for c in http.cookie_jar if c.key == FLOW_COOKIE)
        state = (await app.app[STORE].get_session(FLOW_KEY + flow_id))["state"]
        async with http.get(f"{app.url}/auth/oidc/callback",
                            params={"error": "access_denied", "state": state, "iss": provider.issuer}) as resp:
            assert sso_error(resp) == "oidc_denied"


# -- the provider down -----------------------------------------------------------------------------------


async def test_provider_not_listening_answers_within_seconds(make_sso_app):
    app = await make_sso_app(None, issuer=f"http://127.0.0.1:{free_port()}")
    async with browser() as http:
        started = time.monotonic()
        async with http.get(f"{app.url}/auth/oidc/login") as resp:
            assert sso_error(resp) == "oidc_unavailable"
        async with http.get(f"{app.url}/auth/oidc/login", headers={"Accept": "application/json"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "oidc_unavailable"
        assert time.monotonic() - started < 5


async def test_provider_that_hangs_answers_within_the_timeout(make_sso_app):
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    hung = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    try:
        app = await make_sso_app(None, issuer=f"http://127.0.0.1:{port}", timeout_seconds=1)
        async with browser() as http:
            started = time.monotonic()
            async with http.get(f"{app.url}/auth/oidc/login", headers={"Accept": "application/json"}) as resp:
                assert resp.status == 502 and (await resp.json())["error"]["code"] == "oidc_unavailable"
            assert time.monotonic() - started < 4
        assert accepted, "the app never asked the provider"
    finally:
        for writer in accepted:
            writer.close()
        hung.close()
        await hung.wait_closed()


async def test_provider_gone_during_the_sign_in(tmp_path, make_sso_app):
    own = start_provider(tmp_path)
    try:
        app = await make_sso_app(own)
        async with browser() as http:
            form = await to_provider_login(http, app.url)
            url = await callback_url(http, form, "lead.bauamt")
            own.stop()  # the provider goes away before the code is redeemed
            started = time.monotonic()
            async with http.get(url) as resp:
                assert sso_error(resp) == "oidc_unavailable"
            assert time.monotonic() - started < 5
            assert (await session_of(http, app))[0] == 401
    finally:
        own.stop()


# -- local logins ---------------------------------------------------------------------------------------------


async def test_local_logins_switched_off(provider, make_sso_app):
    app = await make_sso_app(provider, local_logins=False)
    await app.auth.add_staff("local", "Local", "correct horse battery", ["bauamt"])
    async with browser() as http:
        async with http.post(f"{app.url}/api/session",
                             json={"username": "local", "password": "correct horse battery"}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "local_logins_disabled"
        async with http.get(f"{app.url}/staff") as r:
            html = await r.text()
        assert 'href="/auth/oidc/login"' in html and 'id="login-form" class="form card" novalidate hidden' in html
        # Single sign-on still works.
        assert sso_error(await sign_in(app, "lead.bauamt", http)) is None
        assert (await session_of(http, app))[0] == 200
    # A password session from before the switch is no session any more.
    account = await app.app[STORE].get_staff("local")
    await app.app[STORE].put_session("old-password-session", {"username": "local", "csrf": "x", "since": 0,
                                                              "epoch": account.session_epoch}, 600)
    with pytest.raises(Exception, match="password logins are switched off"):
        await app.auth.session("old-password-session")


async def test_staff_page_offers_single_sign_on_only_when_configured(provider, make_sso_app, client):
    app = await make_sso_app(provider)
    async with browser() as http, http.get(f"{app.url}/staff") as r:
        html = await r.text()
    assert 'href="/auth/oidc/login"' in html and "Mit Dienstkonto anmelden" in html
    assert 'id="login-form" class="form card" novalidate>' in html  # passwords too
    async with client.get("/staff") as r:  # no [oidc]: no button, no routes
        assert "/auth/oidc/login" not in await r.text()
    async with client.get("/auth/oidc/login", headers={"Accept": "application/json"}) as r:
        assert r.status == 404


# -- the ID token's checks, with real and crafted tokens -----------------------------------------------


@dataclass
class RealToken:
    client: OidcClient
    token: str
    claims: dict[str, Any]
    nonce: str


@pytest.fixture
async def real_token(provider) -> Any:
    """An ID token the provider issued through the code flow (PKCE), redeemed by OidcClient itself."""
    redirect = "http://127.0.0.1:9/callback"  # never called: the redirect is read, not followed
    client_id, secret = await provider.register(redirect)
    settings = OidcSettings(provider.issuer, client_id, secret, (ClaimRule("sps-bauamt-lead", ("lead",)),),
                            scopes=("openid", "profile", "groups"))
    client = OidcClient(settings)
    try:
        flow = Flow.start(redirect, time.time())
        metadata = await client.metadata()
        async with browser() as http:
            async with http.get(authorization_url(metadata.authorization_endpoint, settings, flow)) as resp:
                assert resp.url.path.startswith("/interaction/")
                form = str(resp.url)
            url = await callback_url(http, form, "lead.bauamt")
        query = parse_qs(urlsplit(url).query)
        assert query["state"] == [flow.state]
        tokens = await client.exchange(query["code"][0], flow)
        claims = await client.verify(tokens["id_token"], flow.nonce)
        assert claims["groups"] == ["sps-bauamt-lead", "kantine"] and claims["aud"] == client_id
        yield RealToken(client, tokens["id_token"], claims, flow.nonce)
    finally:
        await client.close()


async def rejected(client: OidcClient, token: str, nonce: str, now: float | None = None) -> str:
    with pytest.raises(TokenRejected) as refused:
        await client.verify(token, nonce, now)
    return refused.value.reason


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_real_token_expired_wrong_nonce_wrong_audience(real_token: RealToken):
    client, token, claims = real_token.client, real_token.token, real_token.claims
    assert await client.verify(token, real_token.nonce, claims["exp"] + 30) == claims  # within the leeway
    assert await rejected(client, token, real_token.nonce, claims["exp"] + 61) == "expired"
    assert await rejected(client, token, real_token.nonce, claims["iat"] - 120) == "not_yet_valid"
    assert await rejected(client, token, "another sign-in's nonce") == "nonce"
    other = OidcClient(OidcSettings(client.settings.issuer, "another-client", "x", client.settings.rules))
    try:
        assert await rejected(other, token, real_token.nonce) == "audience"
    finally:
        await other.close()


async def test_tampered_tokens_are_refused(provider, real_token: RealToken):
    client, token, claims, nonce = real_token.client, real_token.token, real_token.claims, real_token.nonce
    header, payload, signature = token.split(".")
    # The payload changed (more groups), the provider's signature kept.
    assert await rejected(client, f"{header}.{b64({**claims, 'groups': ['sps-admin']})}.{signature}", nonce) \
        == "signature"
    # Signed by another key under the provider's key id.
    impostor = RSAKey.generate_key(2048, parameters={"kid": "provider-1"})
    forged = jwt.encode({"alg": "RS256", "kid": "provider-1"}, {**claims, "groups": ["sps-admin"]}, impostor)
    assert await rejected(client, forged, nonce) == "signature"
    # Signed by a key the provider does not publish (the JWKS is fetched again, then the token refused).
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    assert await rejected(client, jwt.encode({"alg": "RS256", "kid": "stranger"}, claims, stranger), nonce) \
        == "signature"
    # No signature, or an HMAC with the client's secret: algorithms we never accept.
    assert await rejected(client, f"{b64({'alg': 'none'})}.{payload}.", nonce) == "algorithm"
    hmac = OctKey.import_key(client.settings.client_secret.encode())
    assert await rejected(client, jwt.encode({"alg": "HS256"}, claims, hmac), nonce) == "algorithm"
    assert await rejected(client, "not.a-token", nonce) == "malformed"


async def test_crafted_tokens_signed_with_the_providers_key(provider, real_token: RealToken):
    """Tokens made here with the provider's own key: right ones pass, each wrong claim is named."""
    client, nonce = real_token.client, real_token.nonce
    now = int(time.time())
    good = {"iss": provider.issuer, "aud": client.settings.client_id, "sub": "lead.bauamt", "iat": now,
            "exp": now + 300, "nonce": nonce}

    def signed(claims: dict[str, Any]) -> str:
        return jwt.encode({"alg": "RS256", "kid": "provider-1"}, claims, provider.key)

    assert (await client.verify(signed(good), nonce))["sub"] == "lead.bauamt"
    cases = [
        ({"exp": now - 120}, "expired"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"aud": [client.settings.client_id, "someone-else"]}, "audience"),  # several audiences, no azp
        ({"nonce": "replayed"}, "nonce"),
        ({"nbf": now + 600}, "not_yet_valid"),
    ]
    for change, reason in cases:
        assert await rejected(client, signed({**good, **change}), nonce) == reason, change
    for missing in ("nonce", "exp", "sub"):
        claims = {k: v for k, v in good.items() if k != missing}
        assert await rejected(client, signed(claims), nonce) in {"nonce", "malformed"}
    several = {**good, "aud": [client.settings.client_id, "someone-else"], "azp": client.settings.client_id}
    assert (await client.verify(signed(several), nonce))["azp"] == client.settings.client_id


def test_validator_is_pure_with_now_passed_in():
    key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    keys = KeySet.import_key_set({"keys": [key.as_dict(private=False)]})
    token = jwt.encode({"alg": "RS256", "kid": "k"}, {"iss": "https://idp.example", "aud": "c", "sub": "s",
                                                      "iat": 1000, "exp": 1300, "nonce": "n"}, key)
    check = {"issuer": "https://idp.example", "client_id": "c", "nonce": "n", "leeway": 60}
    assert validate_id_token(token, keys, now=1200, **check)["sub"] == "s"
    with pytest.raises(TokenRejected) as refused:
        validate_id_token(token, keys, now=1361, **check)
    assert refused.value.reason == "expired"
    with pytest.raises(TokenRejected) as refused:
        validate_id_token(token, keys, now=1200, algorithms=("ES256",), **check)
    assert refused.value.reason == "algorithm"


# -- claims to roles; settings --------------------------------------------------------------------------------


def settings_with(**changes: Any) -> OidcSettings:
    raw = {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s", "rules": RULES, **changes}
    return parse_oidc(raw)


@pytest.mark.parametrize(("claims", "claim", "roles", "departments"), [
    ({"groups": ["sps-bauamt-lead"]}, "groups", ("clerk", "lead"), ("bauamt",)),
    ({"groups": ["sps-bauamt-lead", "sps-buergerbuero", "sps-admin"]}, "groups", ("admin", "clerk", "lead"),
     ("bauamt", "buergerbuero")),
    ({"groups": "sps-buergerbuero"}, "groups", ("clerk",), ("buergerbuero",)),  # a single string
    ({"realm_access": {"roles": ["sps-admin"]}}, "realm_access.roles", ("admin",), ()),  # Keycloak-style
    ({"roles": ["sps-buergerbuero"], "groups": ["sps-admin"]}, "roles", ("clerk",), ("buergerbuero",)),
])
def test_claim_mapping(claims, claim, roles, departments):
    identity = identity_from_claims({"sub": "1", "preferred_username": "u", **claims}, settings_with(claim=claim))
    assert (identity.roles, identity.departments) == (roles, departments)


@pytest.mark.parametrize("claims", [
    {"groups": []}, {"groups": ["kantine"]}, {}, {"groups": [["sps-admin"]]}, {"groups": {"sps-admin": True}},
])
def test_no_mapped_role_no_identity(claims):
    with pytest.raises(NoRole):
        identity_from_claims({"sub": "1", "preferred_username": "u", **claims}, settings_with())


@pytest.mark.parametrize("username", [None, "", "has space", "x" * 65, ["a", "b"], "../etc"])
def test_unusable_usernames_are_refused(username):
    claims = {"sub": "1", "groups": ["sps-admin"], **({} if username is None else {"preferred_username": username})}
    with pytest.raises(OidcError) as refused:
        identity_from_claims(claims, settings_with())
    assert refused.value.code == "oidc_username"


def test_identity_names_issuer_and_subject():
    a = identity_from_claims({"sub": "1", "preferred_username": "u.name@stadt.example", "name": " Ute \n Name ",
                              "groups": ["sps-admin"]}, settings_with())
    b = identity_from_claims({"sub": "2", "preferred_username": "u.name@stadt.example", "groups": ["sps-admin"]},
                             settings_with())
    assert a.username == "u.name@stadt.example" and a.display_name == "Ute Name" and b.display_name == b.username
    assert a.subject_marker != b.subject_marker and is_sso_account(a.subject_marker)


@pytest.mark.parametrize(("name", "shown"), [
    ("Anna \u202eAmt", "Anna Amt"),  # a bidi override would turn what citizens read around
    ("\u2066Anna\u2069 Amt", "Anna Amt"),  # isolates
    ("Anna\x00\x1b[31m Amt\x7f\x85", "Anna[31m Amt"),  # C0/C1 controls (NEL is whitespace: folded)
    ("An\x1fna Amt", "Anna Amt"),  # an information separator is a control, not whitespace
    ("Anna\ud800 Amt", "Anna Amt"),  # a lone surrogate
    ("\u202e\x07", "u"),  # nothing left: the username
    ("Zoë\u200d Ünal\u200f", "Zoë\u200d Ünal\u200f"),  # ZWJ and RLM stay, as for names typed at /admin
    ("x" * 150, "x" * 100),
])
def test_provider_display_names_follow_the_staff_name_rule(name, shown):
    identity = identity_from_claims({"sub": "1", "preferred_username": "u", "name": name, "groups": ["sps-admin"]},
                                    settings_with())
    assert identity.display_name == shown
    assert clean_display_name(shown) == shown  # what is kept passes the /admin/staff rule unchanged


@pytest.mark.parametrize(("change", "message"), [
    ({"issuer": "http://idp.example"}, "issuer must be an https URL"),
    ({"issuer": "https://idp.example/?x=1"}, "issuer must be an https URL"),
    ({"client_id": ""}, "client_id is required"),
    ({"client_secret": ""}, "client_secret is required"),
    ({"rules": []}, "at least one"),
    ({"rules": [{"value": "g", "roles": ["superuser"]}]}, "unknown role"),
    ({"rules": [{"value": "g", "roles": []}]}, "roles must be a non-empty list"),
    ({"rules": [{"value": "g", "roles": ["clerk"], "department": ["x"]}]}, "unknown key"),
    ({"token_auth": "private_key_jwt"}, "token_auth"),
    ({"timeout_seconds": 120}, "timeout_seconds"),
    ({"local_logins": "no"}, "wrong type"),
    ({"redirect_url": "https://sps.example/elsewhere"}, "redirect_url"),
    ({"scope": ["openid"]}, "unknown key"),
])
def test_settings_are_validated(change, message):
    raw = {"server": {}, "departments": TEST_CONFIG["departments"],
           "oidc": {"issuer": "https://idp.example", "client_id": "c", "client_secret": "s", "rules": RULES, **change}}
    with pytest.raises(ConfigError, match=r"\[oidc\]: .*" + message):
        settings_from_dict(raw)


def test_settings_defaults_and_secret_from_the_environment():
    raw = {"server": {}, "departments": TEST_CONFIG["departments"],
           "oidc": {"issuer": "https://idp.example/realms/stadt", "client_id": "c", "scopes": ["groups"],
                    "rules": RULES}}
    settings = settings_from_dict(raw, env={"SPRECHSTUNDE_OIDC_CLIENT_SECRET": "from-env"}).oidc
    assert settings is not None and settings.client_secret == "from-env"
    assert settings.scopes == ("openid", "groups") and settings.local_logins is True
    assert settings.discovery_url == "https://idp.example/realms/stadt/.well-known/openid-configuration"
    assert settings_from_dict({"server": {}, "departments": TEST_CONFIG["departments"]}).oidc is None


# -- in a real browser ----------------------------------------------------------------------------------------


@pytest.mark.browser
async def test_browser_signs_in_with_the_work_account_and_is_told_when_refused(provider, make_sso_app):
    """Chromium: the staff page's button leads through the provider back to the dashboard; a refused
    sign-in comes back to the login with the reason, announced (role=alert) and focused."""
    from playwright.async_api import expect

    from tests.test_browser import CHROMIUM_ARGS, Problems, launched

    app = await make_sso_app(provider)
    problems = Problems()
    async with launched(CHROMIUM_ARGS) as chromium:
        for account in ("lead.bauamt", "outsider"):
            context = await chromium.new_context(base_url=app.url, locale="de-DE")
            page = problems.watch(await context.new_page())
            await page.goto("/staff")
            await page.get_by_role("link", name="Mit Dienstkonto anmelden").click()
            await page.get_by_label("Account").fill(account)
            await page.get_by_role("button", name="Sign in").click()
            if account == "lead.bauamt":
                await expect(page.locator("#dashboard-view")).to_be_visible()
                await expect(page.locator("[data-field='clerk-name']")).to_have_text("Lena Leitung")
                await expect(page.locator(".panel[data-department='bauamt']")).to_be_visible()
            else:
                error = page.locator("#login-error")
                await expect(error).to_have_text(DE["js.err.oidc_no_role"])
                await expect(error).to_be_focused()
                assert page.url == f"{app.url}/staff"  # the error code does not stay in the address bar
            await context.close()
    assert problems == []


def test_the_readmes_example_section_is_valid():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    example = next(block for block in readme.split("```toml\n")[1:] if block.startswith("[oidc]"))
    raw = tomllib.loads(example.split("```")[0])
    settings = settings_from_dict({"server": {}, "departments": TEST_CONFIG["departments"], **raw}).oidc
    assert settings is not None and settings.token_auth == "client_secret_basic"
    assert [r.roles for r in settings.rules] == [("clerk",), ("clerk", "lead"), ("admin",)]
