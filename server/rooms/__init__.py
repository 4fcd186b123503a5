"""Departments (the rooms of a town hall) and their configuration."""

from .departments import Closure, Department, OpeningHours, parse_closures, parse_hours

__all__ = ["Closure", "Department", "OpeningHours", "parse_closures", "parse_hours"]
