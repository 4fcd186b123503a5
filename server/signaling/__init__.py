"""socket.io signaling: live queue updates for citizens, live dashboards and actions for staff."""

from .hub import Signaling

__all__ = ["Signaling"]
