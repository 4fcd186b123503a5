"""socket.io packets whose JSON cannot be parsed within Python's recursion limit, or that hold text that is not
Unicode (a lone surrogate escape), become a harmless event.

A message nested thousands of levels deep fits the 48 KiB cap, and ``json.loads`` raises RecursionError
on it; python-socketio then logs a traceback and the sender, waiting for an acknowledgement, hears
nothing. ``SafePacket`` turns such a payload into the event ``invalid_payload``, which the server answers
with a clear ``invalid_input`` error (server/signaling/hub.py): the sender learns why, nothing changes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from socketio import packet

INVALID_EVENT = "invalid_payload"
NO_EVENT = "\x00no event"
"""What an event packet that names no event a client may send becomes: no handler takes it, the catch-all
answers ``unknown_event`` (server/signaling/hub.py)."""
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting", "newListener",
                             "removeListener", "*"})
"""Names socket.io keeps for itself: python-socketio would run the server's own connect or disconnect handler
for a client's event of that name (a page's bookkeeping while it stays connected), or its catch-all ("*")
with the arguments shifted."""


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogates(text: str | bytes, value: Any) -> bool:
    """Whether JSON ``text`` (parsed: ``value``) holds text that is not Unicode: an escaped half of a
    surrogate pair without its other half. Such text cannot be stored or sent on (UTF-8 has no code for it:
    the Redis client refuses the command), so it is refused where it comes in. Checked only when the text
    has such an escape at all."""
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if not _SURROGATE_ESCAPE.search(raw):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _SafeJson:
    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text: str | bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            value = json.loads(text, *args, **kwargs)
        except RecursionError:
            return [INVALID_EVENT]
        return [INVALID_EVENT] if lone_surrogates(text, value) else value


class SafePacket(packet.Packet):
    """python-socketio's packet with the guarded JSON decoder (our subclass only: the library's own
    ``Packet`` class, which its clients use too, is left as it is). An event packet whose first element is
    no event name a client may send (missing, not text, or reserved) names ``NO_EVENT`` instead: the library
    would run the server's own ``disconnect`` handler for ``["disconnect"]``, and fail with a traceback on
    ``[]``, ``[5]`` or ``{}``."""

    json = _SafeJson

    def decode(self, encoded_packet: Any) -> int:
        attachments: int = super().decode(encoded_packet)
        if self.packet_type in (packet.EVENT, packet.BINARY_EVENT):
            data: Any = getattr(self, "data")  # noqa: B009 - the library's attribute has no declared type
            if not isinstance(data, list) or not data:
                self.data = [NO_EVENT]
            elif not isinstance(data[0], str) or data[0] in RESERVED_EVENTS:
                self.data = [NO_EVENT, *data[1:]]
        return attachments
