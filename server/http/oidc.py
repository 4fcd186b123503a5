"""Staff single sign-on routes: ``GET /auth/oidc/login`` and ``GET /auth/oidc/callback``.

The protocol (discovery, JWKS, code exchange, ID-token checks, claims to roles) is in server/oidc.py; here
the browser's side: the flow (state, nonce, PKCE verifier) is kept in the shared store under a random id
that only this browser holds (an HttpOnly cookie, ``SameSite=Lax`` so that the provider's redirect back
carries it), is used once, and ends in a staff session exactly like a password login's (Auth.open_session).

Accounts: a sign-in creates or updates a StaffAccount under the provider's username whose password hash
is a marker naming the provider's subject (server.oidc.subject_marker): no password matches it, and an
account of another origin (a local password account, or another subject under the same name) is never
taken over: that sign-in is refused. Roles and departments come from the provider on every sign-in; when
the provider no longer grants a role, the account is removed (its sessions end).

Failures answer within seconds (timeouts on every call to the provider): a browser is sent back to the
staff page, which says what went wrong (``/staff?sso_error=<code>``, messages ``js.err.<code>``); a client
that asks for JSON gets the error in the API's JSON shape with the HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from ..errors import error_response, is_store_unavailable
from ..oidc import (
    FLOW_SECONDS,
    Flow,
    FlowInvalid,
    Identity,
    OidcClient,
    OidcError,
    ProviderUnavailable,
    TokenRejected,
    authorization_url,
    is_sso_account,
)
from ..store.base import StaffAccount
from .api import client_address, set_session_cookie
from .keys import AUDIT, AUTH, SETTINGS, STORE

log = logging.getLogger("sprechstunde.oidc")

OIDC: web.AppKey[OidcClient] = web.AppKey("oidc", OidcClient)
FLOW_COOKIE = "sps_oidc"
FLOW_COOKIE_PATH = "/auth/oidc/"
FLOW_KEY = "oidc-flow:"
"""Flows live in the session store under this prefix (Auth.session refuses such entries as sessions)."""
FLOWS_PER_ADDRESS = 100
"""Sign-ins one address may start per ``FLOW_SECONDS`` (a town hall's staff share one address)."""
AFTER_SIGN_IN = "/staff"
"""Where a sign-in lands. A page whose data comes from the API: coming back from a provider on another site,
the browser does not send the SameSite=Strict session cookie with this first navigation (the redirect chain
began on the provider's site), but it does with the page's own API calls."""
NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def setup_oidc(app: web.Application) -> None:
    """Register the routes when ``[oidc]`` is configured, and tell the page templates (the staff page shows
    the button, and hides the password form when local logins are off). Call after setup_pages."""
    settings = app[SETTINGS]
    oidc = settings.oidc
    try:
        from .pages import TEMPLATES
    except ImportError:  # pages are optional for API-only deployments
        pass
    else:
        if TEMPLATES in app:
            app[TEMPLATES].globals["sso"] = {"enabled": oidc is not None,
                                             "local_logins": oidc is None or oidc.local_logins}
    if oidc is None:
        return
    client = OidcClient(oidc)
    app[OIDC] = client
    app.router.add_get("/auth/oidc/login", sign_in_start, name="oidc_login")
    app.router.add_get("/auth/oidc/callback", sign_in_callback, name="oidc_callback")

    async def close(app: web.Application) -> None:
        await client.close()

    app.on_cleanup.append(close)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def _refuse(request: web.Request, error: OidcError) -> web.Response:
    """A browser goes back to the staff page, which shows the message; a JSON client gets the error."""
    if _wants_json(request):
        response = error_response(error.code, str(error), error.status)
    else:
        response = web.Response(status=303, headers={"Location": f"{AFTER_SIGN_IN}?sso_error={error.code}"})
    response.headers.update(NO_STORE)
    response.del_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response


def _redirect_uri(request: web.Request) -> str:
    settings = request.app[SETTINGS]
    assert settings.oidc is not None
    if settings.oidc.redirect_url:
        return settings.oidc.redirect_url
    scheme = "https" if settings.secure_cookies else request.scheme
    return f"{scheme}://{request.host}/auth/oidc/callback"


async def sign_in_start(request: web.Request) -> web.Response:
    """Start a sign-in: remember state, nonce and PKCE verifier for this browser, send it to the provider."""
    settings, store, client = request.app[SETTINGS], request.app[STORE], request.app[OIDC]
    assert settings.oidc is not None
    if await store.hit(f"oidc-start:{client_address(request)}", FLOW_SECONDS) > FLOWS_PER_ADDRESS:
        return _refuse(request, OidcError("too many sign-ins from this address; please try again in a few minutes",
                                          code="rate_limited", status=429))
    try:
        metadata = await client.metadata()
    except OidcError as e:
        log.warning("SSO sign-in not started: %s", e)
        return _refuse(request, e)
    flow = Flow.start(_redirect_uri(request), time.time())
    flow_id = secrets.token_urlsafe(32)
    await store.put_session(FLOW_KEY + flow_id, flow.to_dict(), FLOW_SECONDS)
    response = web.Response(status=303, headers={
        "Location": authorization_url(metadata.authorization_endpoint, settings.oidc, flow), **NO_STORE,
    })
    response.set_cookie(FLOW_COOKIE, flow_id, httponly=True, samesite="Lax", secure=settings.secure_cookies,
                        max_age=FLOW_SECONDS, path=FLOW_COOKIE_PATH)
    return response


async def _take_flow(request: web.Request) -> Flow:
    """This browser's flow, removed from the store (a callback is good for one try)."""
    flow_id = request.cookies.get(FLOW_COOKIE, "")
    if not flow_id or len(flow_id) > 64:
        raise FlowInvalid("no sign-in was started in this browser (or cookies are blocked); please start again")
    store = request.app[STORE]
    data = await store.get_session(FLOW_KEY + flow_id)
    if data is None:
        raise FlowInvalid("the sign-in has expired or was already used; please start again")
    await store.delete_session(FLOW_KEY + flow_id)
    try:
        return Flow.from_dict(data)
    except (KeyError, TypeError) as e:
        raise FlowInvalid("the sign-in cannot be continued; please start again") from e


async def sign_in_callback(request: web.Request) -> web.Response:
    """The provider's redirect back: check state, redeem the code, check the ID token, map the claims,
    open a staff session."""
    settings, client = request.app[SETTINGS], request.app[OIDC]
    assert settings.oidc is not None
    try:
        flow = await _take_flow(request)
        flow.check_state(request.query.get("state"), time.time())
        issuer = request.query.get("iss")  # RFC 9207: which provider answered (against mix-up attacks)
        if issuer is not None and issuer != settings.oidc.issuer:
            raise OidcError("the answer came from another sign-in service", code="oidc_provider_error")
        error = request.query.get("error")
        if error is not None:
            denied = error in {"access_denied", "login_required", "consent_required", "interaction_required"}
            error = "".join(c for c in error[:64] if c.isascii() and (c.isalnum() or c in "_.-"))  # for the log
            raise OidcError(f"the sign-in service did not sign you in ({error})",
                            code="oidc_denied" if denied else "oidc_provider_error", status=403 if denied else 400)
        code = request.query.get("code", "")
        if not code or len(code) > 4096:
            raise FlowInvalid("the sign-in service sent no authorization code")
        try:
            async with asyncio.timeout(settings.oidc.timeout_seconds * 2):
                identity = await client.sign_in(code, flow, time.time())
        except TimeoutError as e:
            raise ProviderUnavailable("the sign-in service did not answer in time") from e
        account = await _account(request, identity)
    except OidcError as e:
        await _note_refusal(request, e)
        return _refuse(request, e)
    except Exception as e:
        if is_store_unavailable(e):
            raise  # answered as store_unavailable (server/errors.py)
        log.exception("SSO sign-in failed unexpectedly")
        return _refuse(request, OidcError("the sign-in failed; please try again", code="oidc_failed", status=500))
    session = await request.app[AUTH].open_session(account, "oidc")
    log.info("SSO sign-in of %s", account.username)
    response = web.Response(status=303, headers={"Location": AFTER_SIGN_IN, **NO_STORE})
    set_session_cookie(response, session, settings)
    response.del_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
    return response


async def _account(request: web.Request, identity: Identity) -> StaffAccount:
    """Create or update the account of this identity; refuse to take over an account of another origin."""
    store, auth = request.app[STORE], request.app[AUTH]
    existing = await store.get_staff(identity.username)
    if existing is not None and existing.password_hash != identity.subject_marker:
        why = "another single sign-on identity" if is_sso_account(existing.password_hash) else "a password account"
        log.warning("SSO sign-in of %s refused: the username belongs to %s", identity.username, why)
        raise OidcError("an account with your username already exists here; ask your administration",
                        code="oidc_account_conflict", status=409, username=identity.username)
    live = {d.id for d in auth.departments()}
    unknown = sorted(set(identity.departments) - live)
    if unknown:
        log.warning("[oidc] rules name department(s) that do not exist: %s", ", ".join(unknown))
    departments = tuple(d for d in identity.departments if d in live)
    account = StaffAccount(identity.username, identity.display_name, identity.subject_marker, identity.roles,
                           departments, existing.session_epoch if existing else 0)
    if account != existing:
        await store.put_staff(account)
        changed = [f for f in ("display_name", "roles", "departments")
                   if existing is None or getattr(existing, f) != getattr(account, f)]
        await _audit(request, "staff.created" if existing is None else "staff.updated", account.username,
                     departments, {"method": "oidc", "fields": changed})
    return account


async def _note_refusal(request: web.Request, error: OidcError) -> None:
    """Log (the username at most) and audit a refused sign-in; an account whose identity the provider no
    longer grants a role is removed, which ends its sessions."""
    reason = error.reason if isinstance(error, TokenRejected) else error.code
    who = f" for {error.username}" if error.username else ""
    log.warning("SSO sign-in refused%s: %s (%s)", who, reason, error)
    details: dict[str, Any] = {"method": "oidc", "reason": reason}
    await _audit(request, "auth.login_failed", error.username or "", None, details)
    if error.username and error.subject_marker:
        store = request.app[STORE]
        existing = await store.get_staff(error.username)
        if existing is not None and existing.password_hash == error.subject_marker:
            await store.delete_staff(existing.username)
            log.info("SSO account %s removed: the provider grants it no role any more", existing.username)
            await _audit(request, "staff.removed", existing.username, existing.departments,
                         {"method": "oidc", "reason": "no_role"})


async def _audit(request: web.Request, action: str, target: str, departments: Any, details: dict[str, Any]) -> None:
    audit = request.app.get(AUDIT)
    if audit is not None:
        await audit.record("system", action, target=target, department=departments or None, details=details)
