"""The SFU reaches into aiortc's private attributes (server/media/aiortc_glue.py).

This test fails loudly, naming the attribute, when an aiortc upgrade moves one of
them. Fix aiortc_glue.py (and docs/media.md) before bumping the pin.
"""

from __future__ import annotations

import inspect

import aioice
import pytest
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport

from server.media import aiortc_glue


def test_pinned_aiortc_version():
    assert aiortc_glue.aiortc_version() == aiortc_glue.PINNED_AIORTC, (
        f"aiortc {aiortc_glue.aiortc_version()} installed, the SFU is checked against "
        f"{aiortc_glue.PINNED_AIORTC}: run this file, fix server/media/aiortc_glue.py, then move the pin"
    )


def _need(obj: object, name: str, where: str) -> object:
    assert hasattr(obj, name), f"aiortc internals moved: {where} has no attribute {name!r} (see aiortc_glue.py)"
    return getattr(obj, name)


def test_methods_the_sfu_replaces_are_called_through_self():
    """Instance attributes only override methods that aiortc calls as ``self.<name>``."""
    send_src = inspect.getsource(RTCRtpSender.send)
    assert "self._run_rtp(" in send_src and "self._run_rtcp()" in send_src, "RTCRtpSender.send changed"
    stop_src = inspect.getsource(RTCRtpSender.stop)
    for event in ("__rtp_started", "__rtcp_started", "__rtp_exited", "__rtcp_exited"):
        assert event in stop_src, f"RTCRtpSender.stop no longer waits for {event}"
    recv_src = inspect.getsource(RTCDtlsTransport._recv_next)
    assert "self._handle_rtcp_data(" in recv_src, "RTCDtlsTransport no longer routes SRTCP via _handle_rtcp_data"
    assert "self._rx_srtp" in recv_src, "RTCDtlsTransport no longer decrypts with _rx_srtp"
    assert "self._tx_srtp" in inspect.getsource(RTCDtlsTransport._send_rtp)
    stun_src = inspect.getsource(aioice.ice.StunProtocol.datagram_received)
    assert "stun.parse_message(data)" in stun_src, "aioice StunProtocol.datagram_received changed"
    queue_src = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put(" in queue_src, "the receiver's decoder queue is not where the tripwire is"
    sendto_src = inspect.getsource(aioice.ice.Connection.sendto)
    assert "self._nominated.get(component)" in sendto_src and "protocol.send_data" in sendto_src


@pytest.mark.asyncio
async def test_private_attributes_exist_on_live_objects():
    client = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        client.addTransceiver("audio")
        client.addTransceiver("video")
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(RTCSessionDescription(sdp=client.localDescription.sdp, type="offer"))
        for t in server.getTransceivers():
            _need(t, aiortc_glue.TRANSCEIVER_CODECS, "RTCRtpTransceiver")
            _need(t, aiortc_glue.TRANSCEIVER_HEADER_EXTENSIONS, "RTCRtpTransceiver")
            assert aiortc_glue.transceiver_codecs(t), "transceiver._codecs empty after the offer"
            sender, receiver = t.sender, t.receiver
            _need(sender, aiortc_glue.SENDER_SSRC, "RTCRtpSender")
            _need(sender, aiortc_glue.SENDER_RUN_RTP, "RTCRtpSender")
            _need(sender, aiortc_glue.SENDER_RUN_RTCP, "RTCRtpSender")
            _need(sender, aiortc_glue.SENDER_ENCODER, "RTCRtpSender")
            for name in aiortc_glue.SENDER_EVENTS:
                _need(sender, name, "RTCRtpSender")
            _need(receiver, aiortc_glue.RECEIVER_DECODER_THREAD, "RTCRtpReceiver")
            _need(receiver, aiortc_glue.RECEIVER_DECODER_QUEUE, "RTCRtpReceiver")
            dtls = receiver.transport
            _need(dtls, aiortc_glue.DTLS_RX_SRTP, "RTCDtlsTransport")
            _need(dtls, aiortc_glue.DTLS_TX_SRTP, "RTCDtlsTransport")
            _need(dtls, aiortc_glue.DTLS_HANDLE_RTCP, "RTCDtlsTransport")
            _need(dtls.transport, aiortc_glue.ICE_CONNECTION, "RTCIceTransport")
            connection = aiortc_glue.ice_connection(dtls)
            assert isinstance(connection, aioice.Connection)
            _need(connection, aiortc_glue.CONN_NOMINATED, "aioice.Connection")
            _need(connection, aiortc_glue.CONN_PROTOCOLS, "aioice.Connection")
        await server.setLocalDescription(await server.createAnswer())
        connection = aiortc_glue.ice_connection(server.getTransceivers()[0].receiver.transport)
        protocols = getattr(connection, aiortc_glue.CONN_PROTOCOLS)
        assert protocols, "aioice.Connection._protocols is empty after gathering"
        for protocol in protocols:
            _need(protocol, aiortc_glue.PROTOCOL_DATAGRAM_RECEIVED, "aioice StunProtocol")
        pair_attrs = inspect.getsource(aioice.ice.CandidatePair)
        assert "self.protocol" in pair_attrs and "def remote_addr" in pair_attrs, "aioice CandidatePair changed"
    finally:
        await client.close()
        await server.close()


def test_pylibsrtp_binding_used_by_fast_srtp():
    """FastSrtp calls libsrtp through pylibsrtp's cffi binding with the session's context."""
    import os

    from pylibsrtp import Policy, Session
    from pylibsrtp._binding import lib

    assert hasattr(lib, "srtp_protect") and hasattr(lib, "srtp_unprotect")
    key = os.urandom(30)
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    _need(tx, aiortc_glue.SRTP_SESSION_POINTER, "pylibsrtp.Session")
    packet = bytes([0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + b"payload" * 100
    fast_tx, fast_rx = aiortc_glue.FastSrtp(tx), aiortc_glue.FastSrtp(rx)
    protected = fast_tx.protect(packet)
    assert protected != packet and rx.unprotect(protected) == packet
    assert fast_rx.unprotect(tx.protect(packet[:2] + b"\x00\x02" + packet[4:]))[2:4] == b"\x00\x02"
