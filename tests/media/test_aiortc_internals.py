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

pytestmark = pytest.mark.asyncio


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
    assert "self.receiver.data_received(" in stun_src, "aioice no longer hands datagrams to Connection.data_received"
    queue_src = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    assert "self.__decoder_queue.put(" in queue_src, "the receiver's decoder queue is not where the tripwire is"
    sendto_src = inspect.getsource(aioice.ice.Connection.sendto)
    assert "self._nominated.get(component)" in sendto_src and "protocol.send_data" in sendto_src


async def test_private_attributes_exist_on_live_objects():
    client = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        client.addTransceiver("audio")
        client.addTransceiver("video")
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(
            RTCSessionDescription(sdp=client.localDescription.sdp, type="offer")
        )
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
            _need(connection, aiortc_glue.CONN_DATA_RECEIVED, "aioice.Connection")
        pair_attrs = inspect.getsource(aioice.ice.CandidatePair)
        assert "self.protocol" in pair_attrs and "def remote_addr" in pair_attrs, "aioice CandidatePair changed"
    finally:
        await client.close()
        await server.close()
