"""Staff single sign-on with OpenID Connect: the protocol, apart from the routes (server/http/oidc.py).

Authorization code flow with PKCE (S256), ``state`` and ``nonce``. The pure parts (settings, the
authorization URL, the ID token's checks, the claim-to-role mapping) are plain synchronous functions with
``now`` passed in; :class:`OidcClient` does the HTTP calls (discovery, JWKS, token endpoint, userinfo) with
aiohttp, each with a timeout, and turns every failure into an :class:`OidcError` with a code.

Tokens and keys are handled by joserfc: the ID token's signature is checked against the provider's JWKS
(asymmetric algorithms only; ``none`` and HMAC are refused), then its issuer, audience (and ``azp`` when
there are several audiences), expiry and issue time (with a small leeway), and the nonce of this flow.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import aiohttp
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet

from .staff_admin import clean_display_name

log = logging.getLogger("sprechstunde.oidc")

ROLES = frozenset({"clerk", "lead", "admin", "moderator"})
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "EdDSA")
"""ID-token algorithms we accept: signatures by the provider's published keys only (no ``none``, no HMAC
with the client secret)."""

FLOW_SECONDS = 600
"""How long a started sign-in may take at the provider (state, nonce and PKCE verifier are kept as long)."""
METADATA_SECONDS = 3600.0
"""Discovery and JWKS are cached this long; the JWKS is fetched again at once for an unknown key id."""
JWKS_REFETCH_SECONDS = 10.0
"""At most one extra JWKS fetch per this many seconds for unknown key ids (a flood of foreign tokens must
not turn into a flood of requests to the provider)."""
MAX_RESPONSE_BYTES = 512 * 1024
"""Largest discovery, JWKS, token or userinfo answer read from the provider."""

SSO_PASSWORD_PREFIX = "!oidc:"
"""The ``password_hash`` of an account created by single sign-on: not an argon2 hash, so no password ever
matches it, and it names the identity (issuer and subject, hashed) the account belongs to."""

_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_TOKEN_AUTH = ("client_secret_basic", "client_secret_post")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class OidcError(Exception):
    """A sign-in failed; ``code`` is what the client sees (``js.err.<code>`` in server/i18n.py)."""

    code = "oidc_failed"
    status = 400

    def __init__(self, message: str, code: str | None = None, status: int | None = None,
                 username: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.username = username
        """Who tried, when the provider already told us (for the log and the audit log)."""
        self.subject_marker: str | None = None


class ProviderUnavailable(OidcError):
    """The provider did not answer in time, refused, or answered with something unusable."""

    code = "oidc_unavailable"
    status = 502


class FlowInvalid(OidcError):
    """No matching sign-in was started in this browser (state missing, wrong or expired)."""

    code = "oidc_state"
    status = 400


class TokenRejected(OidcError):
    """The ID token failed a check; ``reason`` says which (signature, issuer, audience, expired, nonce,
    not_yet_valid, algorithm, malformed)."""

    code = "oidc_token"
    status = 400

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoRole(OidcError):
    """Signed in at the provider, but no rule maps the user's claims to a role here."""

    code = "oidc_no_role"
    status = 403


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRule:
    """Users whose claim holds ``value`` get ``roles`` in ``departments``."""

    value: str
    roles: tuple[str, ...]
    departments: tuple[str, ...] = ()


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str
    rules: tuple[ClaimRule, ...]
    scopes: tuple[str, ...] = ("openid", "profile")
    claim: str = "groups"
    """The claim whose values the rules match: a string or a list of strings; dots reach into objects
    (``realm_access.roles``)."""
    username_claim: str = "preferred_username"
    display_name_claim: str = "name"
    token_auth: str = "client_secret_basic"
    redirect_url: str | None = None
    """The callback URL registered at the provider; default: this server's origin + /auth/oidc/callback
    (set it behind a reverse proxy)."""
    local_logins: bool = True
    """Password logins beside single sign-on; false: only single sign-on."""
    timeout_seconds: float = 5.0
    leeway_seconds: float = 60.0

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


_OIDC_KEYS: dict[str, type | tuple[type, ...]] = {
    "issuer": str, "client_id": str, "client_secret": str, "scopes": list, "claim": str,
    "username_claim": str, "display_name_claim": str, "token_auth": str, "redirect_url": str,
    "local_logins": bool, "timeout_seconds": (int, float), "leeway_seconds": (int, float), "rules": list,
}


def _allowed_url(url: str, *, loopback_http: bool) -> bool:
    parts = urlsplit(url)
    if not parts.netloc or parts.query or parts.fragment:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and loopback_http and parts.hostname in _LOOPBACK


def parse_oidc(raw: Any, env: Mapping[str, str] | None = None) -> OidcSettings:
    """Validate the ``[oidc]`` section; raises ValueError saying what is wrong.

    The client secret may come from the environment (``SPRECHSTUNDE_OIDC_CLIENT_SECRET``) instead of the
    file. Plain http is accepted for a provider on this machine only (tests, a local proxy).
    """
    env = env or {}
    if not isinstance(raw, dict):
        raise ValueError("must be a table")
    for key, value in raw.items():
        expected = _OIDC_KEYS.get(key)
        if expected is None:
            raise ValueError(f"unknown key {key!r}")
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ValueError(f"{key} has the wrong type")
    secret = env.get("SPRECHSTUNDE_OIDC_CLIENT_SECRET") or raw.get("client_secret", "")
    for key, value in (("issuer", raw.get("issuer")), ("client_id", raw.get("client_id")),
                       ("client_secret", secret)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} is required")
    issuer = raw["issuer"]
    if not _allowed_url(issuer, loopback_http=True):
        raise ValueError("issuer must be an https URL without query or fragment")
    redirect_url = raw.get("redirect_url")
    if redirect_url is not None and (not _allowed_url(redirect_url, loopback_http=True)
                                     or not urlsplit(redirect_url).path.endswith("/auth/oidc/callback")):
        raise ValueError("redirect_url must be this server's https URL ending in /auth/oidc/callback")
    scopes = raw.get("scopes", ["openid", "profile"])
    if not all(isinstance(s, str) and s and " " not in s for s in scopes):
        raise ValueError("scopes must be a list of scope names")
    if "openid" not in scopes:
        scopes = ["openid", *scopes]
    token_auth = raw.get("token_auth", "client_secret_basic")
    if token_auth not in _TOKEN_AUTH:
        raise ValueError("token_auth must be \"client_secret_basic\" or \"client_secret_post\"")
    for key in ("claim", "username_claim", "display_name_claim"):
        if key in raw and not raw[key].strip():
            raise ValueError(f"{key} must not be empty")
    timeout = float(raw.get("timeout_seconds", 5.0))
    leeway = float(raw.get("leeway_seconds", 60.0))
    if not 0.5 <= timeout <= 30:
        raise ValueError("timeout_seconds must be between 0.5 and 30")
    if not 0 <= leeway <= 300:
        raise ValueError("leeway_seconds must be between 0 and 300")
    rules = tuple(_rule(r, i) for i, r in enumerate(raw.get("rules", [])))
    if not rules:
        raise ValueError("at least one [[oidc.rules]] entry is required (nobody without a mapped role gets in)")
    return OidcSettings(
        issuer=issuer, client_id=raw["client_id"], client_secret=secret, rules=rules, scopes=tuple(scopes),
        claim=raw.get("claim", "groups"), username_claim=raw.get("username_claim", "preferred_username"),
        display_name_claim=raw.get("display_name_claim", "name"), token_auth=token_auth,
        redirect_url=redirect_url, local_logins=raw.get("local_logins", True), timeout_seconds=timeout,
        leeway_seconds=leeway,
    )


def _rule(raw: Any, index: int) -> ClaimRule:
    where = f"rules[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(raw) - {"value", "roles", "departments"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    value, roles, departments = raw.get("value"), raw.get("roles"), raw.get("departments", [])
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: value is required")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ValueError(f"{where}: roles must be a non-empty list")
    unknown_roles = set(roles) - ROLES
    if unknown_roles:
        raise ValueError(f"{where}: unknown role(s) {', '.join(sorted(unknown_roles))}")
    if not isinstance(departments, list) or not all(isinstance(d, str) and d for d in departments):
        raise ValueError(f"{where}: departments must be a list of department ids")
    return ClaimRule(value, tuple(roles), tuple(departments))


# -- the flow ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """What one browser's sign-in keeps between the redirect to the provider and the callback."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    started: float

    @classmethod
    def start(cls, redirect_uri: str, now: float) -> Flow:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48),
                   redirect_uri, now)

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "oidc-flow", "state": self.state, "nonce": self.nonce, "verifier": self.verifier,
                "redirect_uri": self.redirect_uri, "started": self.started}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Flow:
        if d.get("kind") != "oidc-flow":
            raise FlowInvalid("no sign-in was started in this browser")
        return cls(d["state"], d["nonce"], d["verifier"], d["redirect_uri"], d["started"])

    def check_state(self, state: object, now: float) -> None:
        if now - self.started > FLOW_SECONDS:
            raise FlowInvalid("the sign-in took too long; please start again")
        if not isinstance(state, str) or not secrets.compare_digest(state.encode(), self.state.encode()):
            raise FlowInvalid("the sign-in's state does not match; please start again")


def authorization_url(endpoint: str, settings: OidcSettings, flow: Flow) -> str:
    params = {
        "response_type": "code",
        "client_id": settings.client_id,
        "redirect_uri": flow.redirect_uri,
        "scope": " ".join(settings.scopes),
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": flow.challenge,
        "code_challenge_method": "S256",
    }
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)


# -- the ID token ------------------------------------------------------------------------------------


def validate_id_token(token: str, keys: KeySet, *, issuer: str, client_id: str, nonce: str, now: float,
                      leeway: float = 60.0, algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, expiry and nonce are right.

    Raises :class:`TokenRejected` with the first check that failed; ``InvalidKeyIdError`` passes through
    (the caller fetches the JWKS again and retries once).
    """
    allowed = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    try:
        decoded = jwt.decode(token, keys, algorithms=allowed)
    except InvalidKeyIdError:
        raise
    except BadSignatureError as e:
        raise TokenRejected("signature", "the ID token's signature is wrong") from e
    except UnsupportedAlgorithmError as e:
        raise TokenRejected("algorithm", "the ID token is signed with an algorithm we do not accept") from e
    except Exception as e:  # noqa: BLE001 - whatever else an untrusted token makes the parser raise
        raise TokenRejected("malformed", "the ID token cannot be read") from e
    claims = dict(decoded.claims)
    registry = jwt.JWTClaimsRegistry(
        now=int(now), leeway=int(leeway),
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as e:
        raise TokenRejected("expired", "the ID token has expired") from e
    except (InvalidClaimError, MissingClaimError) as e:
        claim = str(getattr(e, "claim", ""))
        reasons = {"iss": "issuer", "aud": "audience", "nbf": "not_yet_valid", "iat": "not_yet_valid",
                   "nonce": "nonce"}
        reason = next((reasons[c] for c in claim.split(",") if c in reasons), "malformed")
        raise TokenRejected(reason, f"the ID token's {claim or 'claims'} is wrong or missing") from e
    except JoseError as e:
        raise TokenRejected("malformed", "the ID token's claims cannot be checked") from e
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise TokenRejected("audience", "the ID token was issued to another client (azp)")
    if not isinstance(claims["nonce"], str) or not secrets.compare_digest(claims["nonce"].encode(), nonce.encode()):
        raise TokenRejected("nonce", "the ID token's nonce does not belong to this sign-in")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise TokenRejected("malformed", "the ID token has no subject")
    return claims


# -- claims to roles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Who signed in, as this server sees them."""

    username: str
    display_name: str
    roles: tuple[str, ...]
    departments: tuple[str, ...]
    subject_marker: str
    """The password_hash of their account: names issuer and subject, matches no password."""


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """The string values of a claim (a string, or a list of strings); dots reach into objects."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def subject_marker(issuer: str, subject: str) -> str:
    return SSO_PASSWORD_PREFIX + hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:40]


def is_sso_account(password_hash: str) -> bool:
    """Whether an account was created by single sign-on (it has no password)."""
    return password_hash.startswith(SSO_PASSWORD_PREFIX)


def identity_from_claims(claims: Mapping[str, Any], settings: OidcSettings) -> Identity:
    """Map the provider's claims to our user: username, display name, roles and departments (the union
    over every matching rule). Raises :class:`NoRole` when no rule matches, :class:`OidcError` when the
    username claim is missing or unusable."""
    usernames = claim_values(claims, settings.username_claim)
    username = usernames[0] if len(usernames) == 1 else ""
    if not _USERNAME.match(username):
        raise OidcError(
            f"the provider's {settings.username_claim!r} claim is missing or not a usable username "
            "(1-64 letters, digits, '.', '_', '-', '@')", code="oidc_username",
        )
    values = set(claim_values(claims, settings.claim))
    roles: set[str] = set()
    departments: set[str] = set()
    for rule in settings.rules:
        if rule.value in values:
            roles.update(rule.roles)
            departments.update(rule.departments)
    marker = subject_marker(settings.issuer, str(claims["sub"]))
    if not roles:
        refused = NoRole("your account has no role in this service; ask your administration to grant one",
                         username=username)
        refused.subject_marker = marker
        raise refused
    names = claim_values(claims, settings.display_name_claim)
    # The same rule as a name typed at /admin/staff (citizens read it); cleaned, not refused: a stray
    # character in the directory must not lock anybody out.
    display = (clean_display_name(names[0]) if names else "") or username
    return Identity(username, display, tuple(sorted(roles)), tuple(sorted(departments)), marker)


# -- the provider --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]

    @classmethod
    def from_document(cls, doc: Any, settings: OidcSettings) -> ProviderMetadata:
        if not isinstance(doc, dict):
            raise ProviderUnavailable("the provider's discovery document is not a JSON object")
        if doc.get("issuer") != settings.issuer:
            raise ProviderUnavailable("the provider's discovery document names another issuer")
        loopback = urlsplit(settings.issuer).hostname in _LOOPBACK
        endpoints = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            url = doc.get(key)
            if not isinstance(url, str) or not _allowed_url(url.split("?")[0], loopback_http=loopback):
                raise ProviderUnavailable(f"the provider's discovery document has no usable {key}")
            endpoints[key] = url
        userinfo = doc.get("userinfo_endpoint")
        if not isinstance(userinfo, str) or not _allowed_url(userinfo, loopback_http=loopback):
            userinfo = None
        offered = doc.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(a for a in offered if a in ASYMMETRIC_ALGORITHMS) if isinstance(offered, list) else ()
        if not algorithms:
            raise ProviderUnavailable("the provider signs ID tokens with no algorithm we accept")
        return cls(settings.issuer, endpoints["authorization_endpoint"], endpoints["token_endpoint"],
                   endpoints["jwks_uri"], userinfo, algorithms)


class OidcClient:
    """The HTTP side: discovery and JWKS (cached), code exchange, userinfo. One per app."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: tuple[float, KeySet] | None = None
        self._lock = asyncio.Lock()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
                headers={"User-Agent": "sprechstunde-oidc", "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _json(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body) of a request to the provider; ProviderUnavailable on network failure,
        timeout, a 5xx or a body that is not JSON."""
        try:
            async with self._http().request(method, url, allow_redirects=False, **kwargs) as resp:
                status, chunks, size = resp.status, [], 0
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise ProviderUnavailable(f"the sign-in service's answer is too large ({what})")
                    chunks.append(chunk)
                body = b"".join(chunks)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            log.warning("OIDC provider unavailable (%s): %s", what, type(e).__name__)
            raise ProviderUnavailable(f"the sign-in service did not answer ({what})") from e
        if status >= 500:
            log.warning("OIDC provider answered %d (%s)", status, what)
            raise ProviderUnavailable(f"the sign-in service failed ({what}: HTTP {status})")
        try:
            return status, json.loads(body)
        except ValueError as e:
            raise ProviderUnavailable(f"the sign-in service's answer is not JSON ({what})") from e

    async def metadata(self, now: float | None = None) -> ProviderMetadata:
        now = time.monotonic() if now is None else now
        cached = self._metadata
        if cached is not None and now - cached[0] < METADATA_SECONDS:
            return cached[1]
        status, doc = await self._json("GET", self.settings.discovery_url, "discovery")
        if status != 200:
            raise ProviderUnavailable(f"the sign-in service's discovery answered HTTP {status}")
        metadata = ProviderMetadata.from_document(doc, self.settings)
        self._metadata = (now, metadata)
        return metadata

    async def keys(self, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys; ``refresh``: fetch again (unknown key id), at most every
        ``JWKS_REFETCH_SECONDS``."""
        async with self._lock:
            now = time.monotonic()
            cached = self._keys
            if cached is not None:
                age = now - cached[0]
                if age < METADATA_SECONDS and (not refresh or age < JWKS_REFETCH_SECONDS):
                    return cached[1]
            metadata = await self.metadata()
            status, doc = await self._json("GET", metadata.jwks_uri, "JWKS")
            if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                raise ProviderUnavailable("the sign-in service's key set cannot be read")
            public = [k for k in doc["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig"
                      and "d" not in k]
            try:
                keys = KeySet.import_key_set({"keys": public})
            except Exception as e:  # noqa: BLE001 - whatever a provider's key set holds, it is unusable
                raise ProviderUnavailable("the sign-in service's key set cannot be read") from e
            self._keys = (now, keys)
            return keys

    async def exchange(self, code: str, flow: Flow) -> dict[str, Any]:
        """Redeem the authorization code (with the PKCE verifier) at the token endpoint."""
        metadata = await self.metadata()
        s = self.settings
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": flow.redirect_uri,
                "code_verifier": flow.verifier}
        headers = {}
        if s.token_auth == "client_secret_post":
            form |= {"client_id": s.client_id, "client_secret": s.client_secret}
        else:  # RFC 6749 2.3.1: both form-encoded, then HTTP Basic
            pair = f"{quote_plus(s.client_id)}:{quote_plus(s.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        status, body = await self._json("POST", metadata.token_endpoint, "token", data=form, headers=headers)
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            log.warning("OIDC token endpoint refused the code: HTTP %d %s", status, error if isinstance(error, str)
                        and len(error) < 64 else "")
            raise OidcError("the sign-in service refused the sign-in; please start again", code="oidc_exchange")
        if not isinstance(body.get("id_token"), str):
            raise OidcError("the sign-in service sent no ID token", code="oidc_exchange")
        return body

    async def verify(self, id_token: str, nonce: str, now: float | None = None) -> dict[str, Any]:
        """:func:`validate_id_token` against the provider's keys, fetching them again once for a key id
        they do not hold (the provider rotated its keys)."""
        metadata = await self.metadata()
        now = time.time() if now is None else now
        s = self.settings
        check = {"issuer": s.issuer, "client_id": s.client_id, "nonce": nonce, "now": now,
                 "leeway": s.leeway_seconds, "algorithms": metadata.algorithms}
        try:
            return validate_id_token(id_token, await self.keys(), **check)  # type: ignore[arg-type]
        except InvalidKeyIdError:
            pass
        try:
            return validate_id_token(id_token, await self.keys(refresh=True), **check)  # type: ignore[arg-type]
        except InvalidKeyIdError as e:
            raise TokenRejected("signature", "the ID token is signed by a key the provider does not publish") from e

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint (for providers that put groups there, not in the ID token);
        empty when there is none. Its ``sub`` must be the ID token's."""
        metadata = await self.metadata()
        if metadata.userinfo_endpoint is None:
            return {}
        status, body = await self._json("GET", metadata.userinfo_endpoint, "userinfo",
                                        headers={"Authorization": f"Bearer {access_token}"})
        if status != 200 or not isinstance(body, dict):
            raise OidcError("the sign-in service refused to tell who signed in", code="oidc_exchange")
        if body.get("sub") != subject:
            raise TokenRejected("userinfo", "the userinfo answer belongs to someone else")
        return body

    async def sign_in(self, code: str, flow: Flow, now: float | None = None) -> Identity:
        """Exchange the code, check the ID token, add userinfo claims when the ID token lacks the role or
        username claim, and map them to an :class:`Identity`."""
        tokens = await self.exchange(code, flow)
        claims = await self.verify(tokens["id_token"], flow.nonce, now)
        s = self.settings
        missing = not claim_values(claims, s.claim) or not claim_values(claims, s.username_claim)
        access_token = tokens.get("access_token")
        if missing and isinstance(access_token, str):
            extra = await self.userinfo(access_token, claims["sub"])
            claims = {**extra, **claims}
        return identity_from_claims(claims, s)
