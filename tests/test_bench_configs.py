"""The benches' configurations are ones the server accepts: a bench that does not start measures nothing (the
validation of [server] values made the queue bench's check-in limit of 100,000,000 a refused start)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server.settings import load_settings

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def _bench_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.parametrize("redis", [None, "redis://127.0.0.1:6379/0"])
@pytest.mark.parametrize("behind_proxy", [False, True])
def test_the_bench_configuration_is_accepted(tmp_path: Path, redis: str | None, behind_proxy: bool) -> None:
    from _server import write_config

    config = write_config(tmp_path, ["dept01", "dept02"], redis, "spsbench:", full_gc_interval=120.0,
                          behind_proxy=behind_proxy)
    settings = load_settings(config, env={})
    assert [d.id for d in settings.departments] == ["dept01", "dept02"] and settings.joins_per_address == 0


def test_the_metrics_bench_configuration_is_accepted(tmp_path: Path) -> None:
    from _server import write_config
    from metrics_load import metrics_config

    config = write_config(tmp_path, ["dept01"], None, "spsbench:")
    metrics_config(config, grace_seconds=3600.0)
    assert load_settings(config, env={}).metrics_token is not None
    assert "metrics_load" in sys.modules
