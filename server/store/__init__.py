"""Storage behind one interface: an in-memory store and a Redis store."""

from .base import TERMINAL_RETENTION_SECONDS, StaffAccount, Store, Tx

__all__ = ["Store", "Tx", "StaffAccount", "TERMINAL_RETENTION_SECONDS"]
