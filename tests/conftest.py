"""Shared fixtures. Redis fixtures live in tests/redis_fixtures.py, app fixtures in tests/app_fixtures.py."""

pytest_plugins = ["tests.redis_fixtures", "tests.app_fixtures"]
