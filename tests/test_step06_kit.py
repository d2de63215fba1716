"""Step 06 kit: a real redis-server, a real nginx balancer with a test CA, uvicorn replica sets.

Each server runs on loopback with free ports and is stopped by PID. Missing binaries skip with a
Korean note, or fail under COURSE_REQUIRE_TOOLS=1 (CI).
"""

from __future__ import annotations

import time

import pytest

from coursekit import redis_server
from coursekit.redis_server import RedisError, RedisServer


# ---- Redis -----------------------------------------------------------------------------------------
@pytest.fixture
def need_redis():
    redis_server.require_redis("RedisServer 테스트")


def test_redis_url_client_and_restart_on_the_same_port(need_redis):
    import redis

    with RedisServer() as srv:
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0" and srv.alive
        c = srv.client(decode_responses=True)
        assert c.ping() and c.set("k", "v") and c.get("k") == "v"
        assert srv.startup_seconds is not None and srv.startup_seconds < 5
        port, pid = srv.port, srv.pid
        t = time.monotonic()
        srv.stop()
        stopped = time.monotonic() - t
        assert not srv.alive
        with pytest.raises(redis.ConnectionError):
            srv.client(socket_connect_timeout=0.2, retry=None).ping()   # an outage: refused
        t = time.monotonic()
        srv.start()
        restarted = time.monotonic() - t
        assert srv.port == port and srv.pid != pid and srv.alive
        assert c.ping() and c.get("k") is None                  # same URL works again; nothing persisted
        print(f"redis: start {srv.startup_seconds:.3f} s, stop {stopped:.3f} s, restart {restarted:.3f} s")
    assert not srv.alive and srv.folder is None and srv not in redis_server.running()


def test_redis_freeze_hangs_then_thaws(need_redis):
    import redis

    with RedisServer() as srv:
        srv.freeze()
        t = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            srv.client(socket_timeout=0.2, socket_connect_timeout=0.2, retry=None).ping()
        assert time.monotonic() - t < 1.0      # measured 0.20 s; redis-py's default Retry makes it ≈5.5 s
        srv.thaw()
        assert srv.client().ping()
        srv.freeze()
    assert not srv.alive                                        # stop() also ends a frozen server


def test_redis_start_on_a_taken_port_fails_in_korean(need_redis):
    with RedisServer() as first:
        with pytest.raises(RedisError, match="포트가 다른 프로세스에 잡혀"):
            RedisServer(port=first.port, timeout=3).start()


def test_redis_missing_binary_message(monkeypatch):
    monkeypatch.setattr(redis_server, "find_redis", lambda: None)
    with pytest.raises(RedisError, match="설치되어 있지 않습니다"):
        RedisServer().start()
    monkeypatch.delenv("COURSE_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server 가 없어 건너뜁니다"):
        redis_server.require_redis("테스트")
    monkeypatch.setenv("COURSE_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="COURSE_REQUIRE_TOOLS=1"):
        redis_server.require_redis("테스트")
