"""TURN through a real coturn: media that can only take the relay path, and credentials coturn checks.

The module starts Debian's coturn (``turnserver``) on 127.0.0.1 on a free port with a random
``static-auth-secret`` (coturn's REST scheme, ``use-auth-secret``) and stops it at the end. The citizen's
peer is built from the ``ice_servers`` of ``media_config``, as the page builds its connection, with the
relay-only transport policy: it gathers no host candidate, so every packet of its camera check goes
through coturn to the server and back.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)

from server.media import aiortc_glue

from .media.peers import Client, FrameNumberTrack, ToneTrack, consecutive, wait_for
from .redis_fixtures import stop_process
from .socket_clients import citizen_socket, join
from .test_media_signaling import numbers, offer, slot_of

pytestmark = pytest.mark.turn

REALM = "sprechstunde.test"
RELAY_PORTS = (61000, 61999)
"""coturn's relay ports: above Linux's ephemeral range (32768-60999), so no test socket takes them."""
START_TIMEOUT = 15.0
"""Seconds a freshly started turnserver gets to answer a STUN binding request."""
CONNECT_TIMEOUT = 60.0
"""A relayed connection (TURN allocation, permissions, channel binds, DTLS) on a loaded 2-core machine."""


@dataclass(frozen=True)
class Coturn:
    port: int
    secret: str
    log_file: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_file.read_text("utf-8", errors="replace")


def _turnserver() -> str:
    """Debian's coturn binary. Missing: a failure in CI, else a skip (as for Chromium)."""
    binary = shutil.which("turnserver") or next(
        (p for p in ("/usr/bin/turnserver", "/usr/sbin/turnserver") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        message = "turnserver (Debian's coturn) is missing: run `make coturn`"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_stun(port: int, timeout: float = 0.2) -> bool:
    """A STUN binding request (RFC 5389) to 127.0.0.1:port gets its success response."""
    transaction = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction




def _start_coturn(binary: str, workdir: Path, secret: str) -> tuple[subprocess.Popen[bytes], Coturn]:
    """Start turnserver on a free port; retry on another port if that one was taken meanwhile."""
    log_file = workdir / "turnserver.log"
    for _ in range(3):
        port = _free_udp_port()
        args = [
            binary,
            "-n",  # no configuration file: /etc/turnserver.conf is the Debian service's, not ours
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={port}",
            f"--min-port={RELAY_PORTS[0]}",
            f"--max-port={RELAY_PORTS[1]}",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            f"--realm={REALM}",
            "--allow-loopback-peers",  # relay addresses are on 127.0.0.1: coturn refuses them as peers otherwise
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-tcp-relay",
            "--no-rfc5780",  # would want a second address and port
            "--relay-threads=1",
            "--fingerprint",
            "--verbose",  # one line per request, with the username: the allocation is seen in the log
            # its own file (flushed per line; stdout into a file would be block-buffered), no rollover
            f"--log-file={log_file}",
            "--simple-log",
            f"--userdb={workdir / 'turndb'}",
            f"--pidfile={workdir / 'turnserver.pid'}",
        ]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_stun(port):
                return proc, Coturn(port, secret, log_file)
            time.sleep(0.05)
        stop_process(proc)
    log = log_file.read_text("utf-8", errors="replace")[-3000:] if log_file.exists() else ""
    pytest.fail(f"turnserver ({binary}) did not start answering on 127.0.0.1; its log:\n{log}", pytrace=False)


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    binary = _turnserver()
    proc, server = _start_coturn(binary, tmp_path_factory.mktemp("coturn"), secrets.token_urlsafe(24))
    try:
        yield server
    finally:
        stop_process(proc)


class RelayClient(Client):
    """A :class:`Client` (camera with frame numbers, decoded remotes) whose connection is built from
    ``media_config``'s ice_servers with the relay-only policy: its only candidates are TURN allocations."""

    def __init__(self, name: str, ice_servers: list[dict[str, Any]]) -> None:
        # The base class's connection has no ICE servers; it is left empty (no transceiver, no socket) and
        # replaced by one configured as the page configures its own.
        super().__init__(name, slots=0, publish=False)
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[RTCIceServer(**server) for server in ice_servers],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY,
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        )
        self.audio, self.video = ToneTrack(), FrameNumberTrack()
        self.pc.addTrack(self.audio)
        self.pc.addTrack(self.video)

    def ice_connection(self) -> Any:
        """The aioice connection under the bundled transport."""
        return aiortc_glue.ice_connection(self.pc.getTransceivers()[0].sender.transport)

    def nominated_pair(self) -> Any:
        """aioice's nominated candidate pair of the (single, bundled) component, or None."""
        return getattr(self.ice_connection(), aiortc_glue.CONN_NOMINATED).get(1)


def allocations(log: str, username: str) -> list[str]:
    """coturn's log lines of successful ALLOCATE requests by ``username``."""
    user = re.escape(f"user <{username}>")
    return re.findall(rf"^.*{user}.*ALLOCATE processed, success.*$", log, re.MULTILINE)


def refusals(log: str, username: str) -> list[str]:
    """coturn's log lines of requests by ``username`` answered with 401 Unauthorized."""
    user = re.escape(f"user <{username}>")
    return re.findall(rf"^.*{user}.*error 401: Unauthorized.*$", log, re.MULTILINE)


def relay_port(log: str, username: str) -> int | None:
    """The relay port coturn allocated for ``username``: its "Local relay addr" line comes right before
    the session's "new ... username=<...>" line."""
    lines = log.splitlines()
    new = next((i for i, line in enumerate(lines) if f"new, realm=<{REALM}>, username=<{username}>" in line), None)
    if new is None:
        return None
    for line in reversed(lines[:new]):
        match = re.search(r"Local relay addr: 127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    return None


async def test_camera_check_goes_through_coturn(coturn, make_live_server, clients, peers):
    """A relay-only citizen decodes its own frames back from the server: media provably went through
    coturn. Its only candidates are relays, the nominated pair's local candidate is the relay address
    coturn allocated for the citizen's ``<expiry>:citizen:<ticket>`` username, and coturn logged that
    allocation (and one for the server's own credential)."""
    live_server = await make_live_server(turn_urls=[coturn.url], turn_secret=coturn.secret)
    joined = await join(live_server.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(live_server.url, joined["token"])
    clients.append(citizen)
    config = await citizen.call("media_config")
    assert config["ok"]
    (ice,) = config["ice_servers"]
    assert ice["urls"] == [coturn.url]
    assert re.fullmatch(rf"\d+:citizen:{re.escape(ticket)}", ice["username"])

    peer = RelayClient("citizen", config["ice_servers"])
    peers.append(peer)
    assert (await offer(citizen, peer, check=True))["room"] == "waiting"
    local = [line for line in peer.pc.localDescription.sdp.splitlines() if line.startswith("a=candidate:")]
    assert local and all(" typ relay " in line for line in local), local

    layout = await citizen.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    own = slot_of(layout, f"citizen:{ticket}")["video_mid"]
    await wait_for(lambda: len(peer.frames_from(own)) >= 15, limit=CONNECT_TIMEOUT,
                   what="15 of the citizen's own frames back through coturn")
    assert consecutive(numbers(peer, own))
    assert peer.received[own].unreadable == 0

    pair = peer.nominated_pair()
    assert pair is not None and peer.pc.connectionState == "connected"
    assert pair.local_candidate.type == "relay"
    assert pair.local_candidate.host == "127.0.0.1"
    assert RELAY_PORTS[0] <= pair.local_candidate.port <= RELAY_PORTS[1]
    log = coturn.log()
    assert allocations(log, ice["username"]), log[-3000:]
    assert relay_port(log, ice["username"]) == pair.local_candidate.port
    # The server's own connections use the same TURN server with their own credential.
    assert re.search(r"user <\d+:sprechstunde>.*ALLOCATE processed, success", log), log[-3000:]


async def test_a_wrong_secret_gets_no_relay(coturn, make_live_server, clients, peers):
    """The server derives credentials from another secret than coturn's. coturn refuses them, so a
    relay-only peer gathers no candidate and cannot connect: the server refuses its offer. The server's
    own allocation is refused as well, yet a peer that reaches it directly still gets its camera check."""
    since = len(coturn.log())  # this test's part of the log: coturn serves the whole module
    live_server = await make_live_server(turn_urls=[coturn.url], turn_secret="not-" + coturn.secret)
    joined = await join(live_server.url)
    ticket = joined["ticket"]["id"]
    citizen = await citizen_socket(live_server.url, joined["token"])
    clients.append(citizen)
    config = await citizen.call("media_config")
    (ice,) = config["ice_servers"]

    relay_only = RelayClient("citizen", config["ice_servers"])
    peers.append(relay_only)
    sdp = await relay_only.offer()  # gathering is over: coturn answered the allocation
    assert "a=candidate:" not in sdp
    await wait_for(lambda: bool(refusals(coturn.log()[since:], ice["username"])), what="coturn's 401 for the citizen")
    assert not allocations(coturn.log()[since:], ice["username"])
    ack = await citizen.call("media_offer", {"sdp": sdp, "check": True})
    assert ack["error"]["code"] == "no_media"
    assert relay_only.pc.connectionState != "connected" and relay_only.nominated_pair() is None

    direct = Client("citizen-direct")
    peers.append(direct)
    assert (await offer(citizen, direct, check=True))["room"] == "waiting"
    layout = await citizen.wait_for("media_layout", lambda m: len(m["slots"]) == 1)
    own = slot_of(layout, f"citizen:{ticket}")["video_mid"]
    await wait_for(lambda: len(direct.frames_from(own)) >= 15, limit=CONNECT_TIMEOUT,
                   what="15 of the direct citizen's own frames")
    server_refused = re.compile(r"user <\d+:sprechstunde>.*error 401: Unauthorized")
    await wait_for(lambda: bool(server_refused.search(coturn.log()[since:])), what="coturn's 401 for the server")
    assert not re.search(r"user <\d+:sprechstunde>.*ALLOCATE processed, success", coturn.log()[since:])
