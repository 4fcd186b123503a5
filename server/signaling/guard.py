"""One guard for every socket event: the connection's role is authorised, the payload is one JSON
object, and every refusal becomes an error acknowledgement through ``server.errors.error_payload``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from ..errors import error_payload
from ..queue.errors import InvalidInput, NotAuthorised

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def guard(sio: socketio.AsyncServer, roles: tuple[str, ...], handler: Handler) -> Callable[..., Awaitable[Any]]:
    """Wrap an event handler: authorise the connection's role, require one JSON object, and turn every
    refusal into an error acknowledgement (``server.errors.error_payload``), a store that does not answer
    included (``store_unavailable``, within the Redis socket timeout: the ack never waits on a hung Redis
    for longer)."""

    async def guarded(sid: str, data: Any = None, *rest: Any) -> dict[str, Any]:
        try:
            session = await sio.get_session(sid)
            if session.get("role") not in roles:
                raise NotAuthorised(f"this event is for {' or '.join(roles)} connections")
            if data is None:
                data = {}
            if not isinstance(data, dict) or rest:
                raise InvalidInput("the payload must be one JSON object")
            return await handler(sid, {**data, "_session": session})
        except Exception as e:  # noqa: BLE001 - every refusal becomes an ack
            return error_payload(e)

    return guarded
