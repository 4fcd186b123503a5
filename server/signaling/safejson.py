"""socket.io packets whose JSON cannot be parsed within Python's recursion limit become a harmless event.

A message nested thousands of levels deep fits the 48 KiB cap, and ``json.loads`` raises RecursionError
on it; python-socketio then logs a traceback and the sender, waiting for an acknowledgement, hears
nothing. ``SafePacket`` turns such a payload into the event ``invalid_payload``, which the server answers
with a clear ``invalid_input`` error (server/signaling/hub.py): the sender learns why, nothing changes.
"""

from __future__ import annotations

import json
from typing import Any

from socketio import packet

INVALID_EVENT = "invalid_payload"


class _SafeJson:
    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            return json.loads(text, *args, **kwargs)
        except RecursionError:
            return [INVALID_EVENT]


class SafePacket(packet.Packet):
    """python-socketio's packet with the guarded JSON decoder (our subclass only: the library's own
    ``Packet`` class, which its clients use too, is left as it is)."""

    json = _SafeJson
