"""One typed settings object, read once from a TOML file and the environment, validated, frozen."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .appointments.model import AppointmentConfig
from .mail import SmtpSettings, parse_smtp
from .oidc import OidcSettings, parse_oidc
from .queue.errors import InvalidInput
from .recording.model import RecordingMode, RecordingPolicy
from .rooms.departments import Department, parse_closures, parse_hours

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "demo.toml"


class ConfigError(Exception):
    """The configuration is unusable; the message says what and where."""


@dataclass(frozen=True)
class Settings:
    departments: tuple[Department, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    timezone: str = "Europe/Berlin"
    redis_url: str | None = None
    """Keep live state in Redis when set; otherwise in this process's memory."""
    redis_prefix: str = "sps:"
    data_dir: Path = Path("var")
    """Where the embedded store keeps staff accounts (staff.json) and recordings' metadata (recordings.json);
    recordings' media files go under ``data_dir/recordings/`` (mode 0700, never served statically)."""
    grace_seconds: float = 300.0
    """How long a disconnected citizen keeps their place."""
    page_away_seconds: float = 15.0
    """A citizen's page that closes and comes back within this many seconds was never away: no
    ``disconnected`` for the ticket, no store write for the close nor for the return (a network blip or a
    reload; a reconnect storm of thousands of pages). If it stays away, the ticket's grace period starts from
    the moment it closed. 0: at once."""
    position_interval: float = 1.0
    """Coalescing interval of position updates per department, in seconds."""
    joins_per_address: int = 10
    """Successful check-ins per client address and window (refused attempts do not count)."""
    join_window_seconds: float = 600.0
    join_trusted_networks: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of shared connections the operator vouches for (the town hall's kiosk, a
    library, a shelter): their check-ins count against ``joins_per_trusted_address`` instead."""
    joins_per_trusted_address: int = 0
    """Check-ins per trusted address and window; 0: not limited."""
    answer_seconds: float = 120.0
    """How long a called citizen has to answer before the clerk may mark them as not there (no-show)."""
    rejoin_seconds: float = 600.0
    """How long after a no-show the citizen may take their old place back (once); 0: not at all."""
    login_attempts_per_address: int = 20
    session_hours: float = 10.0
    secure_cookies: bool = False
    """Mark cookies Secure (set when served over HTTPS, which production must be)."""
    trust_forwarded_for: bool = False
    """Take the client address from X-Forwarded-For (only behind a trusted reverse proxy)."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    """Addresses or networks (CIDR) of the reverse proxies whose X-Forwarded-For is believed: the client is
    the right-most entry that is not one of them, and only when the direct peer is one of them."""
    demo: bool = False
    """Create a demo clerk per department when no staff account exists."""
    max_body_bytes: int = 16 * 1024
    max_socket_message_bytes: int = 48 * 1024
    """A browser's SDP offer with every codec is about 6 KB per audio+video pair (18 KB for a town-hall
    viewer's three pairs): 48 KiB carries four pairs with room to spare."""
    cors_origins: tuple[str, ...] = ()
    """Extra origins allowed for socket.io (same origin is always allowed)."""
    turn_urls: tuple[str, ...] = ()
    """TURN (or STUN) server URLs for browsers and the SFU, e.g. ``turn:turn.example.org:3478``. Empty:
    no ICE servers at all (the SFU then asks no public STUN server)."""
    turn_secret: str | None = None
    """coturn's ``static-auth-secret`` (``use-auth-secret``): short-lived TURN credentials are derived
    from it per participant."""
    turn_ttl_seconds: float = 86400.0
    """How long a browser's TURN credential stays valid."""
    max_video_bitrate: int = 1_000_000
    """Cap for every publisher's video, in bit/s (told to browsers and enforced with REMB)."""
    max_media_rooms: int = 200
    """Media rooms (camera checks, pre-warmed waiting citizens, consultations) per server process."""
    stage_relay_host: str | None = None
    """With Redis: the address this node's town-hall stage relay listens on and the other nodes connect to
    (server/media/stage_relay.py); unset: ``host``. Only the other nodes need to reach it."""
    stage_relay_port: int = 0
    """Port of the stage relay; 0: one the system picks (each node advertises its own in Redis)."""
    ping_interval: float = 25.0
    """Seconds between engine.io pings to each page (a page that does not answer within 20 s more is
    gone); lower it when a proxy closes idle connections sooner."""
    full_gc_interval: float = 600.0
    """Seconds between full garbage collections in ``sprechstunde serve`` (server/gcpolicy.py): each
    stops the server for about 1 ms per 10 connected pages."""
    shutdown_seconds: float = 10.0
    """On SIGTERM, ``sprechstunde serve`` exits within this many seconds, even with requests still open:
    pages and dashboards are told at once, consultations end, hung requests are cut off at the deadline."""
    accessibility_contact: str = ""
    """Where people report barriers (e-mail address or URL), shown in the accessibility statement
    (BITV 2.0 §7); empty: the statement says to contact the municipality."""
    accessibility_statement_date: str = ""
    """When the statement was last reviewed (free text, e.g. "30.11.2026")."""
    sign_language_video: Path | None = None
    sign_language_captions: Path | None = None
    """Captions (WebVTT) for the sign-language video's spoken parts, if it has any (WCAG 1.2.2)."""
    """A local video file with the service explained in German Sign Language (DGS), shown on the start
    page and served at /media/sign-language-video; relative paths are relative to the config file."""
    metrics_host: str = "127.0.0.1"
    """Address of the separate listener for ``/metrics`` (with ``metrics_port``)."""
    metrics_port: int = 0
    """Port of a second listener that serves only ``/metrics`` (no token needed there); 0: none."""
    metrics_token: str | None = None
    """Bearer token that lets ``/metrics`` through on the main port; unset (and no ``metrics_port``): 404."""
    audit_retention_days: int = 400
    """Days the audit log keeps an entry (who did what, staff usernames and ids only); then it is swept."""
    smtp: SmtpSettings | None = None
    """The ``[smtp]`` section: e-mail confirmations and reminders of appointments; None: no e-mail."""
    oidc: OidcSettings | None = None
    """The ``[oidc]`` section: staff single sign-on with OpenID Connect (server/oidc.py); None: passwords only."""
    stats_retention_days: int = 400
    """Days the statistics event log (no personal data) and its counters are kept (server/store/eventlog.py)."""
    config_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def department(self, department_id: str) -> Department | None:
        for d in self.departments:
            if d.id == department_id:
                return d
        return None


_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "audit_retention_days": int, "stats_retention_days": int,
    "metrics_host": str, "metrics_port": int, "metrics_token": str,
    "host": str, "port": int, "timezone": str, "redis_url": str, "redis_prefix": str, "data_dir": str,
    "grace_seconds": (int, float), "page_away_seconds": (int, float), "position_interval": (int, float),
    "joins_per_address": int,
    "join_window_seconds": (int, float), "join_trusted_networks": list, "joins_per_trusted_address": int,
    "answer_seconds": (int, float), "rejoin_seconds": (int, float),
    "login_attempts_per_address": int, "session_hours": (int, float),
    "secure_cookies": bool, "trust_forwarded_for": bool, "trusted_proxies": list, "demo": bool,
    "max_body_bytes": int, "max_socket_message_bytes": int, "cors_origins": list, "turn_urls": list,
    "turn_secret": str, "turn_ttl_seconds": (int, float), "max_video_bitrate": int, "max_media_rooms": int,
    "stage_relay_host": str, "stage_relay_port": int,
    "full_gc_interval": (int, float), "ping_interval": (int, float), "shutdown_seconds": (int, float),
    "accessibility_contact": str, "accessibility_statement_date": str, "sign_language_video": str,
    "sign_language_captions": str,
}
_DEPT_KEYS = {"id", "name", "description", "hours", "queue_cap", "service_minutes", "require_name",
              "require_concern", "recording", "recording_purpose", "recording_retention_days", "closures",
              "appointments"}


def _is_network(value: object) -> bool:
    """An address or a CIDR network; strict, so "10.0.0.1/8" (host bits set, likely a typo) is refused."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_network(value)
    except ValueError:
        return False
    return True


def _trusted_proxies(value: Any, key: str = "trusted_proxies") -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"[server]: {key} must be a list of addresses or networks")
    for entry in value:
        if not _is_network(entry):
            raise ConfigError(f"[server]: {key}: {entry!r} is not an address or network")
    return tuple(value)


def _recording_policy(raw: dict[str, Any], where: str) -> RecordingPolicy:
    mode = raw.get("recording", "off")
    if mode not in {m.value for m in RecordingMode}:
        raise ConfigError(f'{where}: recording must be "off" or "on_request"')
    purpose = raw.get("recording_purpose", "")
    days = raw.get("recording_retention_days", 0)
    if not isinstance(purpose, str) or not isinstance(days, int) or isinstance(days, bool):
        raise ConfigError(f"{where}: recording_purpose must be text and recording_retention_days a whole number")
    if mode == RecordingMode.ON_REQUEST and (not purpose.strip() or days < 1):
        raise ConfigError(
            f"{where}: recording = \"on_request\" needs recording_purpose and recording_retention_days (at least 1)"
        )
    return RecordingPolicy(RecordingMode(mode), " ".join(purpose.split()), days)


def _department(raw: dict[str, Any], where: str) -> Department:
    unknown = set(raw) - _DEPT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("id", "name"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{where}: '{key}' is required")
    try:
        return Department(
            id=raw["id"],
            name=raw["name"],
            description=raw.get("description", ""),
            hours=parse_hours(raw.get("hours")),
            queue_cap=raw.get("queue_cap"),
            service_minutes=float(raw.get("service_minutes", 10.0)),
            require_name=bool(raw.get("require_name", False)),
            require_concern=bool(raw.get("require_concern", False)),
            recording=_recording_policy(raw, where),
            closures=parse_closures(raw.get("closures")),
            appointments=AppointmentConfig.from_dict(raw["appointments"]) if "appointments" in raw else None,
        )
    except (InvalidInput, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Read the TOML file (``--config``, else SPRECHSTUNDE_CONFIG, else the demo), then the environment
    (REDIS_URL, SPRECHSTUNDE_HOST, SPRECHSTUNDE_PORT), then keyword overrides."""
    env = dict(os.environ) if env is None else env
    config_path = Path(path or env.get("SPRECHSTUNDE_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(config_path.read_text("utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"configuration file {config_path} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config_path}: {e}") from e
    return settings_from_dict(raw, env=env, config_path=config_path, **overrides)


def settings_from_dict(raw: dict[str, Any], env: dict[str, str] | None = None,
                       config_path: Path | None = None, **overrides: Any) -> Settings:
    env = {} if env is None else env
    unknown = set(raw) - {"server", "departments", "smtp", "oidc"}
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(sorted(unknown))}")
    server = dict(raw.get("server", {}))
    for key, value in server.items():
        expected = _SERVER_KEYS.get(key)
        if expected is None:
            raise ConfigError(f"[server]: unknown key {key!r}")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"[server]: {key} has the wrong type")
    if env.get("REDIS_URL"):
        server["redis_url"] = env["REDIS_URL"]
    if env.get("SPRECHSTUNDE_HOST"):
        server["host"] = env["SPRECHSTUNDE_HOST"]
    if env.get("SPRECHSTUNDE_PORT"):
        try:
            server["port"] = int(env["SPRECHSTUNDE_PORT"])
        except ValueError:
            raise ConfigError("SPRECHSTUNDE_PORT must be a port number (1-65535)") from None
    server.update({k: v for k, v in overrides.items() if v is not None})
    departments_raw = raw.get("departments", [])
    if not isinstance(departments_raw, list) or not departments_raw:
        raise ConfigError("at least one [[departments]] entry is required")
    departments = tuple(_department(d, f"departments[{i}]") for i, d in enumerate(departments_raw))
    ids = [d.id for d in departments]
    if len(set(ids)) != len(ids):
        raise ConfigError("department ids must be unique")
    data_dir = Path(server.pop("data_dir", "var"))
    if config_path is not None and not data_dir.is_absolute():
        data_dir = (config_path.parent / data_dir) if "data_dir" in raw.get("server", {}) else data_dir
    for key in ("sign_language_video", "sign_language_captions"):
        if server.get(key):
            media = Path(server[key])
            server[key] = (config_path.parent / media) if config_path and not media.is_absolute() else media
            if not server[key].is_file():
                # A configured file that is not there would give a dead player on the start page.
                raise ConfigError(f"[server]: {key}: no such file: {server[key]}")
        else:
            server[key] = None
    if server["sign_language_captions"] and not server["sign_language_video"]:
        raise ConfigError("[server]: sign_language_captions is set but sign_language_video is not")
    if "cors_origins" in server:
        server["cors_origins"] = tuple(server["cors_origins"])
    if "trusted_proxies" in server:
        server["trusted_proxies"] = _trusted_proxies(server["trusted_proxies"])
    if "join_trusted_networks" in server:
        server["join_trusted_networks"] = _trusted_proxies(server["join_trusted_networks"], "join_trusted_networks")
    if "turn_urls" in server:
        urls = server["turn_urls"]
        if not all(isinstance(u, str) and u.startswith(("turn:", "turns:", "stun:")) for u in urls):
            raise ConfigError("[server]: turn_urls must be turn:, turns: or stun: URLs")
        server["turn_urls"] = tuple(urls)
    if server.get("turn_secret") and not server.get("turn_urls"):
        raise ConfigError("[server]: turn_secret is set but turn_urls is empty")
    if not server.get("turn_secret"):
        server["turn_secret"] = None
    if not server.get("redis_url"):
        server["redis_url"] = None
    if not server.get("metrics_token"):
        server["metrics_token"] = None
    elif len(server["metrics_token"]) < 16:
        raise ConfigError("[server]: metrics_token must be at least 16 characters")
    try:
        server["smtp"] = parse_smtp(raw["smtp"]) if "smtp" in raw else None
    except ValueError as e:
        raise ConfigError(f"[smtp]: {e}") from e
    try:
        server["oidc"] = parse_oidc(raw["oidc"], env) if "oidc" in raw else None
    except ValueError as e:
        raise ConfigError(f"[oidc]: {e}") from e
    settings = Settings(departments=departments, data_dir=data_dir, config_path=config_path, **server)
    try:
        settings.tz  # noqa: B018 - validate now, not at the first request
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(f"[server]: unknown timezone {settings.timezone!r}") from e
    if settings.full_gc_interval <= 0 or settings.ping_interval <= 0:
        raise ConfigError("[server]: full_gc_interval and ping_interval must be positive")
    if not 1 <= settings.port <= 65535:
        raise ConfigError("[server]: port must be between 1 and 65535 (or SPRECHSTUNDE_PORT)")
    if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("[server]: redis_url (or REDIS_URL) must start with redis://, rediss:// or unix://")
    from .live_settings import FIELDS, _check  # the values /admin/settings accepts, checked alike in the file
    from .queue.errors import InvalidInput

    for name, rule in FIELDS.items():
        try:
            _check(name, rule, getattr(settings, name))
        except InvalidInput as e:
            raise ConfigError(f"[server]: {e}") from None
    if not 0 < settings.session_hours <= 24 * 31:
        raise ConfigError("[server]: session_hours must be more than 0 and at most 744 (31 days)")
    if settings.login_attempts_per_address < 1:
        raise ConfigError("[server]: login_attempts_per_address must be at least 1")
    if settings.max_body_bytes < 1024 or settings.max_socket_message_bytes < 1024:
        raise ConfigError("[server]: max_body_bytes and max_socket_message_bytes must be at least 1024")
    if not 0 <= settings.metrics_port <= 65535 or (settings.metrics_port and settings.metrics_port == settings.port):
        raise ConfigError("[server]: metrics_port must be 0 (none) or a port other than port")
    if not 0 <= settings.stage_relay_port <= 65535:
        raise ConfigError("[server]: stage_relay_port must be 0 (any) or a port")
    if not 1 <= settings.audit_retention_days <= 36500:
        raise ConfigError("[server]: audit_retention_days must be between 1 and 36500")
    if not 1 <= settings.stats_retention_days <= 3660:
        raise ConfigError("[server]: stats_retention_days must be between 1 and 3660")
    if not 1 <= settings.shutdown_seconds <= 600:
        raise ConfigError("[server]: shutdown_seconds must be between 1 and 600")
    if settings.answer_seconds < 0 or settings.rejoin_seconds < 0 or settings.joins_per_trusted_address < 0:
        raise ConfigError("[server]: answer_seconds, rejoin_seconds and joins_per_trusted_address must not be negative")
    if settings.position_interval <= 0 or settings.grace_seconds < 0:
        raise ConfigError("[server]: position_interval must be positive and grace_seconds not negative")
    if not 0 <= settings.page_away_seconds <= 120:
        raise ConfigError("[server]: page_away_seconds must be between 0 and 120")
    if settings.max_media_rooms < 0 or settings.max_video_bitrate <= 0 or settings.turn_ttl_seconds <= 0:
        raise ConfigError(
            "[server]: max_video_bitrate and turn_ttl_seconds must be positive, max_media_rooms not negative"
        )
    return settings
