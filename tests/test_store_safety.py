"""Store configuration that could lose data silently is refused (issue 15, item 9).

Real ``redis-server`` processes: one started with an evicting policy, the embedded one with each
fsync policy.
"""

from __future__ import annotations

import pytest
import redis

from core.settings import AppendFsync, Settings
from core.store.safety import StoreMisconfigured, verify_store_config
from serve_app.gateway import build_app
from serve_app.local import RedisServer


class EvictingRedis(RedisServer):
    """A Redis configured as a cache: ``--maxmemory-policy <policy>`` on its command line."""

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy

    def arguments(self) -> list[str]:
        return [*super().arguments(), "--maxmemory-policy", self.policy]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_redis_is_refused_with_a_clear_message(policy: str) -> None:
    with EvictingRedis(policy) as server:
        with redis.Redis(port=server.port) as check:
            assert check.config_get("maxmemory-policy") == {"maxmemory-policy": policy}
        with pytest.raises(StoreMisconfigured, match=f"maxmemory-policy {policy}.*evict.*noeviction"):
            verify_store_config(Settings(redis_url=server.url))


def test_the_app_builder_refuses_an_evicting_redis_before_deploying_anything() -> None:
    """``serve deploy`` / ``serve run`` build the app: an evicting Redis stops them with the
    message (the check is the builder's first step, before the notifier starts)."""
    with EvictingRedis("allkeys-lru") as server, pytest.raises(StoreMisconfigured, match="allkeys-lru"):
        build_app(Settings(redis_url=server.url))


def test_a_noeviction_redis_passes(redis_server: RedisServer, settings: Settings) -> None:
    verify_store_config(settings)


@pytest.mark.parametrize("fsync", list(AppendFsync))
def test_the_embedded_redis_fsyncs_as_configured(fsync: AppendFsync) -> None:
    with RedisServer(appendfsync=fsync) as server, redis.Redis(port=server.port) as client:
        config = client.config_get("*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", fsync.value)
    assert config["maxmemory-policy"] == "noeviction"


def test_the_fsync_policy_is_a_setting() -> None:
    assert Settings().redis_appendfsync is AppendFsync.EVERYSEC  # what the embedded Redis always had
    assert Settings.from_env({"SIGHTWIRE_REDIS_APPENDFSYNC": "always"}).redis_appendfsync is AppendFsync.ALWAYS
    with pytest.raises(ValueError, match="appendfsync"):
        Settings.from_env({"SIGHTWIRE_REDIS_APPENDFSYNC": "sometimes"})
