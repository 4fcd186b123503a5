"""Departments (the rooms of a town hall) and their configuration."""

from .departments import Department, OpeningHours, parse_hours

__all__ = ["Department", "OpeningHours", "parse_hours"]
