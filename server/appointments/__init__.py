"""Bookable video appointments: a pure core (model, core, errors) and the service that runs it."""
