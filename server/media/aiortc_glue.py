"""Every access to aiortc's (and aioice's) private attributes lives here.

aiortc has no public API for forwarding RTP without decoding it. The SFU needs to

* see SRTP packets right after decryption, before aiortc's per-packet Python runs,
* encrypt and send raw RTP/RTCP on a peer connection's transport,
* keep aiortc's receivers from starting decoder threads and its senders from
  starting encoders or sending their own sender reports,
* read the negotiated codecs and header extensions of a transceiver.

The exact pins are in ``pyproject.toml``; ``tests/media/test_aiortc_internals.py``
checks every name used here and fails with a clear message when one has moved.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
)

PINNED_AIORTC = "1.16.0"

# Names of private attributes, checked by the internals test.
DTLS_RX_SRTP = "_rx_srtp"
DTLS_TX_SRTP = "_tx_srtp"
DTLS_HANDLE_RTCP = "_handle_rtcp_data"
ICE_CONNECTION = "_connection"
CONN_NOMINATED = "_nominated"
CONN_PROTOCOLS = "_protocols"
PROTOCOL_DATAGRAM_RECEIVED = "datagram_received"
SRTP_SESSION_POINTER = "_srtp"
TRANSCEIVER_CODECS = "_codecs"
TRANSCEIVER_HEADER_EXTENSIONS = "_headerExtensions"
SENDER_SSRC = "_ssrc"
SENDER_RUN_RTP = "_run_rtp"
SENDER_RUN_RTCP = "_run_rtcp"
SENDER_EVENTS = (
    "_RTCRtpSender__rtp_started",
    "_RTCRtpSender__rtp_exited",
    "_RTCRtpSender__rtcp_started",
    "_RTCRtpSender__rtcp_exited",
)
SENDER_ENCODER = "_RTCRtpSender__encoder"
RECEIVER_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
RECEIVER_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def aiortc_version() -> str:
    return aiortc.__version__


class CountingQueue(queue.Queue):  # type: ignore[type-arg]
    """Stands in for a receiver's decoder queue: counts every frame handed to it.

    The SFU never feeds aiortc's receive path, so the count must stay 0; if a
    future change let packets through, the count (and a test) would show it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            self.frames += 1
        super().put(item, block, timeout)


def transceiver_codecs(t: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(getattr(t, TRANSCEIVER_CODECS))


def set_transceiver_codecs(t: RTCRtpTransceiver, codecs: list[RTCRtpCodecParameters]) -> None:
    """Restrict what the answer offers (must be a subset of what the offer had)."""
    setattr(t, TRANSCEIVER_CODECS, codecs)


def transceiver_header_extensions(
    t: RTCRtpTransceiver,
) -> list[RTCRtpHeaderExtensionParameters]:
    return list(getattr(t, TRANSCEIVER_HEADER_EXTENSIONS))


def sender_ssrc(sender: RTCRtpSender) -> int:
    return int(getattr(sender, SENDER_SSRC))


def sender_has_encoder(sender: RTCRtpSender) -> bool:
    return getattr(sender, SENDER_ENCODER) is not None


def receiver_decoding(receiver: RTCRtpReceiver) -> int:
    """Frames handed to this receiver's decoder plus 1 if its decoder thread runs."""
    q = getattr(receiver, RECEIVER_DECODER_QUEUE)
    frames = q.frames if isinstance(q, CountingQueue) else 0
    thread = getattr(receiver, RECEIVER_DECODER_THREAD)
    return frames + (1 if thread is not None else 0)


async def _idle(started: asyncio.Event, exited: asyncio.Event) -> None:
    started.set()
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        pass
    finally:
        exited.set()


def silence_sender(sender: RTCRtpSender, on_started: Callable[[], None]) -> None:
    """Keep aiortc's sender from encoding and from sending its own RTP/RTCP.

    ``RTCRtpSender.send`` starts ``_run_rtp`` (reads the track, encodes) and
    ``_run_rtcp`` (sends SR with its own, here meaningless, counters, and BYE on
    stop). Both are replaced by tasks that only set the events ``stop()`` waits for.
    The SFU writes RTP and RTCP for this sender's SSRC itself. ``on_started`` runs
    when aiortc starts the sender, which is when the DTLS transport is connected.
    """
    rtp_started, rtp_exited, rtcp_started, rtcp_exited = (getattr(sender, name) for name in SENDER_EVENTS)

    def run_rtp(codec: RTCRtpCodecParameters) -> Awaitable[None]:
        on_started()
        return _idle(rtp_started, rtp_exited)

    def run_rtcp() -> Awaitable[None]:
        return _idle(rtcp_started, rtcp_exited)

    setattr(sender, SENDER_RUN_RTP, run_rtp)
    setattr(sender, SENDER_RUN_RTCP, run_rtcp)


def intercept_receiver(receiver: RTCRtpReceiver, on_parameters: Callable[[RTCRtpReceiveParameters], None]) -> None:
    """Replace ``receive()`` so that no decoder thread and no RTCP task start.

    aiortc calls ``receiver.receive(parameters)`` once DTLS is connected; the SFU
    only needs the parameters (SSRCs, RTX SSRC, codecs, header extension ids).
    The decoder queue is swapped for a counting one as a tripwire.
    """
    setattr(receiver, RECEIVER_DECODER_QUEUE, CountingQueue())

    async def receive(parameters: RTCRtpReceiveParameters) -> None:
        on_parameters(parameters)

    receiver.receive = receive  # type: ignore[method-assign]


def dtls_srtp(dtls: RTCDtlsTransport) -> tuple[Any, Any]:
    """(rx, tx) pylibsrtp sessions, both None until the DTLS handshake is done."""
    return getattr(dtls, DTLS_RX_SRTP), getattr(dtls, DTLS_TX_SRTP)


def intercept_rtcp(dtls: RTCDtlsTransport, handler: Callable[[bytes], Awaitable[None]]) -> None:
    """Decrypted RTCP goes to ``handler`` instead of aiortc's RTCP router."""
    setattr(dtls, DTLS_HANDLE_RTCP, handler)


def ice_connection(dtls: RTCDtlsTransport) -> Any:
    """The aioice Connection under a DTLS transport."""
    return getattr(dtls.transport, ICE_CONNECTION)


def intercept_datagrams(connection: Any, fast_path: Callable[[bytes], bool]) -> int:
    """Every UDP datagram of the connection goes first to ``fast_path``.

    aioice's ``StunProtocol.datagram_received`` (one per local candidate) first
    tries to parse every datagram as STUN, then hands the rest to
    ``Connection.data_received``, which queues it for aiortc's DTLS receive loop.
    The event loop looks ``datagram_received`` up on the protocol object for each
    datagram, so an instance attribute takes over. ``fast_path`` returns True when
    it consumed the datagram (SRTP media); STUN, DTLS and SRTCP take the usual path.
    Returns the number of sockets hooked (0 means: gather first).
    """
    protocols = getattr(connection, CONN_PROTOCOLS)
    for protocol in protocols:
        original = getattr(protocol, PROTOCOL_DATAGRAM_RECEIVED)

        def datagram_received(data: bytes, addr: Any, _original: Any = original) -> None:
            if not fast_path(data):
                _original(data, addr)

        setattr(protocol, PROTOCOL_DATAGRAM_RECEIVED, datagram_received)
    return len(protocols)


class FastSrtp:
    """protect/unprotect on a pylibsrtp session's libsrtp context, minus per-call Python.

    pylibsrtp's ``Session`` allocates an ``int *`` and re-checks types on every
    call; this keeps one buffer and one length cell per direction and calls the
    same libsrtp functions through pylibsrtp's own cffi binding. Same thread, same
    context: aiortc's own calls on the session stay valid.
    """

    __slots__ = ("_ctx", "_cdata", "_buffer", "_len", "_protect", "_unprotect", "_error")

    def __init__(self, session: Any) -> None:
        from pylibsrtp import Error
        from pylibsrtp._binding import ffi, lib

        self._ctx = getattr(session, SRTP_SESSION_POINTER)[0]
        self._cdata = ffi.new("char[]", 1600)
        self._buffer = ffi.buffer(self._cdata)
        self._len = ffi.new("int *")
        self._protect = lib.srtp_protect
        self._unprotect = lib.srtp_unprotect
        self._error = Error

    def protect(self, packet: bytes) -> bytes:
        n = len(packet)
        if n > 1500:
            raise self._error("packet is too long")
        self._buffer[0:n] = packet
        self._len[0] = n
        if self._protect(self._ctx, self._cdata, self._len):
            raise self._error("srtp_protect failed")
        return self._buffer[0 : self._len[0]]

    def unprotect(self, packet: bytes) -> bytes:
        n = len(packet)
        if n > 1600:
            raise self._error("packet is too long")
        self._buffer[0:n] = packet
        self._len[0] = n
        if self._unprotect(self._ctx, self._cdata, self._len):
            raise self._error("srtp_unprotect failed")
        return self._buffer[0 : self._len[0]]


def datagram_sink(connection: Any) -> tuple[Callable[[bytes, Any], None], Any] | None:
    """(sendto, address) of the nominated candidate pair, or None if not connected.

    Sending straight on the asyncio datagram transport skips aioice's and aiortc's
    coroutine chain; it is what ``Connection.sendto`` does in the end.
    """
    pair = getattr(connection, CONN_NOMINATED).get(1)
    if pair is None:
        return None
    return pair.protocol.transport.sendto, pair.remote_addr
