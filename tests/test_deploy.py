"""The files in deploy/, each checked by its own tool on this machine.

- nginx site: ``nginx -t`` on the site as shipped (certificate paths replaced by a self-signed pair made
  here), and a running nginx with the site (ports and upstream moved to free ones on 127.0.0.1) in front
  of a live app: pages, the socket.io polling handshake and a WebSocket go through, HTTP moves to HTTPS,
  /metrics is not passed on, and X-Forwarded-For reaches the app as the client's address.
- systemd unit: ``systemd-analyze verify`` and ``systemd-analyze security --offline``. ``verify`` refuses
  an ExecStart binary that does not exist, and /opt/sprechstunde is not installed here: a copy is verified
  with ExecStart pointing at this checkout's own ``sprechstunde`` entry point, every other line as shipped.
- coturn: Debian's ``turnserver`` started with the configuration (ports, addresses, certificate and log
  moved into a temporary directory; the secret a random one): it reads every line, lists the denied peer
  ranges, and accepts an allocation with a credential made by the server's own ``turn_credential`` from
  the same secret, but not one made from another secret.
- compose file: ``docker compose config`` when the compose plugin is present (it needs no engine for
  that), else parsed as YAML by PyYAML (a test dependency).

A missing nginx, systemd-analyze, turnserver or YAML tool skips its test, except in CI (``CI`` set), where
it fails, as for Chromium in tests/test_browser.py.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from server.http.keys import STORE
from server.signaling.media import turn_credential

from .app_fixtures import free_port, make_settings
from .redis_fixtures import stop_process
from .socket_clients import WAIT

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SITE = DEPLOY / "nginx" / "sprechstunde.conf"
UNIT = DEPLOY / "systemd" / "sprechstunde.service"
TURN_CONF = DEPLOY / "coturn" / "turnserver.conf"
COMPOSE = DEPLOY / "compose.yaml"
TOKEN = "metrics-token-0123456789abcdef"
CLIENT_ADDRESS = "127.0.0.2"
"""The test client connects to nginx from here (all of 127/8 is loopback on Linux), so that the address the
app sees can only have come from nginx's X-Forwarded-For, not from the direct peer (127.0.0.1)."""
START_TIMEOUT = 15.0


def _tool(names: tuple[str, ...], what: str) -> str:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    message = f"{what} is missing: run `make test` (it installs Debian's packages)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _nginx() -> str:
    return _tool(("nginx", "/usr/sbin/nginx"), "nginx (Debian's package)")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with the ``cryptography`` package (an aiortc dependency)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _replace(text: str, pattern: str, replacement: str, count: int) -> str:
    """``re.subn`` that insists on finding exactly ``count`` matches, so that a change of the shipped file
    cannot make the test check something else than intended."""
    new, found = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert found == count, f"expected {count} match(es) of {pattern!r} in the shipped file, found {found}"
    return new


def _site(cert: Path, key: Path, ports: tuple[int, int, int] | None = None) -> str:
    """The shipped site with the test's certificate; with ``ports`` (http, https, upstream) also moved to
    127.0.0.1 on those ports."""
    text = SITE.read_text("utf-8")
    text = _replace(text, r"^(\s*ssl_certificate)\s+\S+;", rf"\1 {cert};", 1)
    text = _replace(text, r"^(\s*ssl_certificate_key)\s+\S+;", rf"\1 {key};", 1)
    if ports is not None:
        http, https, upstream = ports
        text = _replace(text, r"^\s*listen \[::\]:\d+.*$", "", 2)
        text = _replace(text, r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{http};", 1)
        text = _replace(text, r"^(\s*)listen 443 ssl", rf"\1listen 127.0.0.1:{https} ssl", 1)
        text = _replace(text, r"^(\s*)server 127\.0\.0\.1:8080\b", rf"\1server 127.0.0.1:{upstream}", 1)
    return text


def _nginx_conf(directory: Path, site: str, foreground: bool) -> Path:
    """A minimal nginx.conf around the site: pid, logs and temporary files in ``directory``."""
    (directory / "site.conf").write_text(site, "utf-8")
    temp = "\n".join(f"    {kind}_temp_path {directory / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would become nobody, unable to write here
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}{'daemon off;' if foreground else ''}\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} notice;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n    include {directory / 'site.conf'};\n}}\n",
        "utf-8",
    )
    return conf


def _nginx_args(directory: Path, conf: Path) -> list[str]:
    return [_nginx(), "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]


ALLOWED_NGINX_WARNINGS = (
    'the "listen ... http2" directive is deprecated',  # nginx >= 1.25.1; Debian 12's 1.22 needs this form
)


def test_nginx_accepts_the_site(tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    conf = _nginx_conf(tmp_path, _site(cert, key), foreground=False)
    result = subprocess.run([*_nginx_args(tmp_path, conf), "-t"], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "syntax is ok" in output and "test is successful" in output, output
    warnings = [line for line in output.splitlines() if "[warn]" in line or "[emerg]" in line]
    assert all(any(allowed in w for allowed in ALLOWED_NGINX_WARNINGS) for w in warnings), warnings


def test_the_site_keeps_metrics_private_and_sets_what_the_app_relies_on():
    text = SITE.read_text("utf-8")
    assert re.search(r"location = /metrics \{\s*return 404;", text)
    assert text.count("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;") == 2  # server + /socket.io/
    assert text.count("proxy_set_header X-Forwarded-Proto $scheme;") == 2
    assert re.search(r"location /socket\.io/ \{[^}]*proxy_set_header Upgrade \$http_upgrade;", text)
    assert re.search(r"^\s*hash \$binary_remote_addr consistent;", text, re.MULTILINE)
    # The app sets these itself on its pages; nginx adding them too would send two differing copies.
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options"):
        assert f"add_header {header}" not in text


class Nginx:
    def __init__(self, directory: Path, conf: Path, http: int, https: int) -> None:
        self.directory, self.http, self.https = directory, http, https
        self.proc = subprocess.Popen(_nginx_args(directory, conf), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text("utf-8", "replace")[-3000:] if path.exists() else ""

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"nginx exited:\n{self.log()}"
            try:
                with socket.create_connection(("127.0.0.1", self.https), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"nginx did not listen:\n{self.log()}"
                time.sleep(0.05)  # polling a starting process; there is no event to wait on

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Any]:
    started: list[Nginx] = []

    def start(upstream: int) -> Nginx:
        cert, key = _self_signed(tmp_path)
        http, https = free_port(), free_port()
        conf = _nginx_conf(tmp_path, _site(cert, key, (http, https, upstream)), foreground=True)
        proxy = Nginx(tmp_path, conf, http, https)
        started.append(proxy)
        proxy.wait_listening()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


async def test_nginx_with_the_site_proxies_to_the_app(make_live_server, nginx_in_front):
    server = await make_live_server(trust_forwarded_for=True, trusted_proxies=["127.0.0.1"], metrics_token=TOKEN)
    proxy = nginx_in_front(int(server.url.rsplit(":", 1)[1]))
    https = f"https://127.0.0.1:{proxy.https}"
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_ADDRESS, 0), ssl=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
        async with http.get(f"{https}/") as resp:
            assert resp.status == 200
            assert "<html" in await resp.text()
            assert resp.headers["Strict-Transport-Security"].startswith("max-age=")  # from nginx
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]  # from the app, once
            assert len(resp.headers.getall("Content-Security-Policy")) == 1

        async with http.get(f"http://127.0.0.1:{proxy.http}/join/bauamt?lang=en", allow_redirects=False) as resp:
            assert resp.status == 301
            assert resp.headers["Location"] == "https://127.0.0.1/join/bauamt?lang=en"

        async with http.get(f"{https}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 404  # nginx's own answer: the app would serve this token
            assert "sprechstunde_" not in await resp.text()
        async with http.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200

        async with http.get(f"{https}/socket.io/", params={"EIO": "4", "transport": "polling"}) as resp:
            assert resp.status == 200
            body = await resp.text()
        assert body.startswith("0"), body  # engine.io OPEN packet
        handshake = json.loads(body[1:])
        assert handshake["sid"] and "websocket" in handshake["upgrades"]

        # A client's own X-Forwarded-For is kept to the left of what nginx appends; the app believes the
        # entry nginx wrote: the join is counted under the address the client really connected from.
        spoofed = {"X-Forwarded-For": "203.0.113.7"}
        async with http.post(f"{https}/api/departments/buergerbuero/tickets", json={"consent": True},
                             headers=spoofed) as resp:
            assert resp.status == 201, await resp.text()
            ticket = await resp.json()
    store = server.app[STORE]
    assert await store.count(f"join:{CLIENT_ADDRESS}") == 1
    assert await store.count("join:203.0.113.7") == 0
    assert await store.count("join:127.0.0.1") == 0

    # The page's socket over WebSocket through nginx (the Upgrade passed on), answered with its ticket.
    page = socketio.AsyncClient(reconnection=False, ssl_verify=False)
    arrived = asyncio.get_running_loop().create_future()
    page.on("ticket", lambda data: arrived.done() or arrived.set_result(data))
    try:
        await page.connect(https, auth={"token": ticket["token"]}, transports=["websocket"], wait_timeout=WAIT)
        assert page.transport() == "websocket"
        assert (await asyncio.wait_for(arrived, WAIT))["id"] == ticket["ticket"]["id"]
    finally:
        await page.disconnect()


# -- systemd --
def _systemd_analyze() -> str:
    return _tool(("systemd-analyze",), "systemd-analyze (systemd)")


def _unit_values(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_systemd_verifies_the_unit(tmp_path: Path):
    shipped = UNIT.read_text("utf-8")
    entry_point = Path(sys.executable).parent / "sprechstunde"
    assert entry_point.exists(), "the venv's sprechstunde entry point (pip install -e .)"
    unit = tmp_path / "sprechstunde.service"
    unit.write_text(_replace(shipped, r"^ExecStart=/opt/sprechstunde/\.venv/bin/sprechstunde ",
                             f"ExecStart={entry_point} ", 1), "utf-8")
    analyze = _systemd_analyze()
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys too (it ignores them with a message): any message is a failure here.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
    security = subprocess.run([analyze, "security", "--offline=true", "--threshold=25", "--no-pager", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr  # exposure 2.5 or lower ("OK")

    values = _unit_values(shipped)
    assert values["User"] == ["sprechstunde"] and values["NoNewPrivileges"] == ["yes"]
    assert values["ProtectSystem"] == ["strict"] and values["PrivateTmp"] == ["yes"]
    assert values["ReadWritePaths"] == ["/var/lib/sprechstunde"]
    assert int(values["LimitNOFILE"][0]) >= 65536
    assert values["KillSignal"] == ["SIGTERM"]
    # systemd must never SIGKILL an orderly stop: the server exits within shutdown_seconds by itself.
    assert float(values["TimeoutStopSec"][0]) > make_settings().shutdown_seconds  # the default


# -- coturn --
RELAY_PORTS = (62000, 62499)
"""Not tests/test_turn.py's range, and above Linux's ephemeral ports."""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _turn_conf(directory: Path, secret: str, port: int, tls_port: int, cert: Path, key: Path) -> Path:
    text = TURN_CONF.read_text("utf-8")
    text = _replace(text, r"^static-auth-secret=.*$", f"static-auth-secret={secret}", 1)
    text = _replace(text, r"^listening-port=\d+$",
                    f"listening-port={port}\nlistening-ip=127.0.0.1\nrelay-ip=127.0.0.1", 1)
    text = _replace(text, r"^tls-listening-port=\d+$", f"tls-listening-port={tls_port}", 1)
    text = _replace(text, r"^min-port=\d+$", f"min-port={RELAY_PORTS[0]}", 1)
    text = _replace(text, r"^max-port=\d+$", f"max-port={RELAY_PORTS[1]}", 1)
    text = _replace(text, r"^cert=.*$", f"cert={cert}", 1)
    text = _replace(text, r"^pkey=.*$", f"pkey={key}", 1)
    text = _replace(text, r"^syslog$", f"log-file={directory / 'turn.log'}\npidfile={directory / 'turn.pid'}\n"
                    f"userdb={directory / 'turndb'}", 1)
    conf = directory / "turnserver.conf"
    conf.write_text(text, "utf-8")
    return conf


def test_the_coturn_config(tmp_path: Path):
    text = TURN_CONF.read_text("utf-8")
    options = {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"use-auth-secret", "static-auth-secret", "fingerprint", "no-multicast-peers"} <= options
    assert not {"no-auth", "allow-loopback-peers", "lt-cred-mech"} & options
    denied = re.findall(r"^denied-peer-ip=(\S+)$", text, re.MULTILINE)
    for network in ("10.0.0.0-10.255.255.255", "172.16.0.0-172.31.255.255", "192.168.0.0-192.168.255.255",
                    "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255", "::1",
                    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        assert network in denied, network


async def test_coturn_runs_the_config_and_takes_the_servers_credentials(tmp_path: Path):
    from aioice.stun import TransactionFailed
    from aioice.turn import create_turn_endpoint

    binary = _tool(("turnserver", "/usr/bin/turnserver"), "turnserver (Debian's coturn)")
    secret = secrets.token_hex(32)
    cert, key = _self_signed(tmp_path)
    port = _free_udp_port()
    conf = _turn_conf(tmp_path, secret, port, free_port(), cert, key)
    log = tmp_path / "turn.log"
    proc = _start(binary, "-c", str(conf))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (log.exists() and "Total General servers" in log.read_text("utf-8", "replace")):
            assert proc.poll() is None, log.read_text("utf-8", "replace") if log.exists() else "turnserver exited"
            assert time.monotonic() < deadline, "turnserver did not start"
            await asyncio.sleep(0.05)  # polling a starting process; there is no event to wait on
        lines = log.read_text("utf-8", "replace")
        assert "Bad configuration format" not in lines and "CONFIG ERROR" not in lines, lines[-3000:]
        assert "Black listing: 10.0.0.0-10.255.255.255" in lines  # the denied peer ranges are in force

        username, password = turn_credential(secret, "t:metrics-deploy", time.time() + 600)
        transport, _ = await create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, password)
        try:
            relayed = transport.get_extra_info("sockname")  # the relayed address coturn allocated
            assert relayed is not None and RELAY_PORTS[0] <= relayed[1] <= RELAY_PORTS[1], relayed
        finally:
            transport.close()
        wrong_user, wrong_password = turn_credential("another secret", "t:metrics-deploy", time.time() + 600)
        with pytest.raises(TransactionFailed):
            await create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), wrong_user, wrong_password)
    finally:
        stop_process(proc)


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- compose --
def _compose_config() -> tuple[str, dict[str, Any]]:
    """The compose file as data, and which tool read it."""
    docker = shutil.which("docker")
    if docker:
        result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
                                capture_output=True, text=True, timeout=60, cwd=DEPLOY)
        if result.returncode == 0:
            return "docker compose config", json.loads(result.stdout)
    import yaml  # PyYAML, a test dependency: docker's compose plugin is not on every machine

    with COMPOSE.open(encoding="utf-8") as f:
        return "PyYAML", yaml.safe_load(f)


def _seconds(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"(\d+)s", str(value))
    assert match, value
    return float(match.group(1))


def test_the_compose_file(record_property):
    tool, compose = _compose_config()
    record_property("compose_parsed_by", tool)
    services = compose["services"]
    assert set(services) == {"server", "redis", "coturn"}
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--appendfsync everysec" in redis_command
    assert {"redis-data", "sprechstunde-data"} <= set(compose["volumes"])

    def mounts(service: str) -> list[tuple[str, str]]:
        result = []
        for volume in services[service].get("volumes", []):
            if isinstance(volume, dict):  # docker compose config's long form
                result.append((volume["source"], volume["target"]))
            else:
                source, target = volume.split(":")[:2]
                result.append((source, target))
        return result

    assert ("redis-data", "/data") in [(Path(s).name, t) for s, t in mounts("redis")]
    for service in services:  # every file mounted from this directory exists
        for source, _ in mounts(service):
            if source.startswith(("./", str(DEPLOY))):
                assert (DEPLOY / source).resolve().exists(), source
    assert any(Path(s).name == "turnserver.conf" for s, _ in mounts("coturn"))
    server = services["server"]
    assert "/readyz" in " ".join(server["healthcheck"]["test"])
    assert server["environment"]["REDIS_URL"].startswith("redis://127.0.0.1:6379")
    assert _seconds(server["stop_grace_period"]) > make_settings().shutdown_seconds
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
