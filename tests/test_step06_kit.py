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


# ---- nginx balancer + replica sets -------------------------------------------------------------------
TINY_APP = '''
import asyncio, os
from fastapi import FastAPI

app = FastAPI()
PORT = os.environ.get("TINY_NAME", "")


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.api_route("/who", methods=["GET", "POST"])
async def who(slow: float = 0.0):
    if slow:
        await asyncio.sleep(slow)
    print("served", os.getpid(), flush=True)
    return {"pid": os.getpid()}
'''

FRAGMENT = """
upstream app_replicas {
    server ${REPLICA_1} max_fails=1 fail_timeout=2s;
    server ${REPLICA_2} max_fails=1 fail_timeout=2s;
}

server {
    listen 127.0.0.1:${HTTP_PORT};
    return 308 https://$host:${HTTPS_PORT}$request_uri;
}

server {
    listen 127.0.0.1:${HTTPS_PORT} ssl;
    ssl_certificate ${TLS_CERT};
    ssl_certificate_key ${TLS_KEY};
    add_header Strict-Transport-Security "max-age=31536000" always;
    location / {
        proxy_pass http://app_replicas;
        proxy_next_upstream error timeout;
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
}
"""


@pytest.fixture
def tiny_app(tmp_path):
    (tmp_path / "main.py").write_text(TINY_APP, encoding="utf-8")
    return tmp_path


@pytest.fixture
def need_nginx():
    from coursekit import balancer

    balancer.require_nginx("Balancer 테스트")


def test_render_fragment_fills_only_the_kit_placeholders():
    from coursekit.balancer import placeholders, render_fragment

    text = "server ${REPLICA_1}; listen ${HTTP_PORT}; return 308 https://$host:${HTTPS_PORT}${request_uri} ${FOO};"
    out = render_fragment(text, {"REPLICA_1": "127.0.0.1:9", "HTTP_PORT": "80", "HTTPS_PORT": "443"})
    assert out == "server 127.0.0.1:9; listen 80; return 308 https://$host:443${request_uri} ${FOO};"
    assert placeholders(text) == {"REPLICA_1", "HTTP_PORT", "HTTPS_PORT", "FOO"}


def test_balancer_round_robins_two_replicas_over_verified_tls(need_nginx, tiny_app, tmp_path):
    import httpx

    from coursekit.balancer import Balancer, TestCA
    from coursekit.replicas import ReplicaSet

    frag = tmp_path / "nginx.conf.template"
    frag.write_text(FRAGMENT, encoding="utf-8")
    t = time.monotonic()
    ca = TestCA()
    ca_seconds = time.monotonic() - t
    with ca, ReplicaSet(tiny_app, n=2) as rs, Balancer(frag, replicas=rs.addresses, tls=ca) as lb:
        assert lb.check().ok and lb.ca_file == str(ca.ca_file)
        with httpx.Client(verify=lb.ssl_context(), timeout=10) as client:
            pids = [client.get(lb.https_url + "/who").json()["pid"] for _ in range(10)]
            assert set(pids) == {p for p in rs.pids} and pids.count(pids[0]) == 5     # round robin
            r = client.get(lb.https_url + "/who")
            assert r.headers["strict-transport-security"].startswith("max-age=")
            plain = client.get(lb.http_url + "/who?x=1")
            assert plain.status_code == 308
            assert plain.headers["location"] == f"https://127.0.0.1:{lb.https_port}/who?x=1"
        with httpx.Client(timeout=5) as untrusting, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
            untrusting.get(lb.https_url + "/who")                  # the test CA is not in the system store
        counts = lb.upstream_counts()
        assert set(counts) == set(rs.addresses) and sum(counts.values()) >= 11
        t = time.monotonic()
        lb.reload()
        reload_seconds = time.monotonic() - t
        with httpx.Client(verify=lb.ssl_context(), timeout=10) as client:
            assert client.get(lb.https_url + "/who").status_code == 200
        print(f"nginx: start {lb.startup_seconds:.3f} s, reload {reload_seconds:.3f} s; TestCA {ca_seconds:.3f} s")
    assert not lb.alive and lb.prefix is None and rs.replicas == []


def test_nginx_t_failure_surfaces_as_text(need_nginx, tmp_path):
    from coursekit.balancer import Balancer, BalancerError

    typo = FRAGMENT.replace("${REPLICA_2}", "${REPLICA2}")
    with pytest.raises(BalancerError) as info:
        Balancer(typo, replicas=[1, 2]).start()
    msg = str(info.value)
    assert "nginx -t" in msg and "채워지지 않은 자리표시자: ${REPLICA2}" in msg
    assert 'host not found in upstream "${REPLICA2}"' in info.value.output
    bad = FRAGMENT.replace("proxy_pass ", "proxy_passs ")
    with pytest.raises(BalancerError, match='unknown directive "proxy_passs"'):
        Balancer(bad, replicas=[1, 2]).start()
    lb = Balancer(bad, replicas=[1, 2])
    result = lb.check()
    assert not result.ok and "실패" in result.summary() and "nginx.conf.template(렌더링됨)" in result.output
    lb.stop()


def test_replica_set_rolling_restart_on_the_same_ports(tiny_app):
    import concurrent.futures

    import httpx

    from coursekit.replicas import ReplicaSet

    with ReplicaSet(tiny_app, n=2, graceful_seconds=5) as rs:
        ports, pids = rs.ports, rs.pids
        # a request in flight during SIGTERM is finished (uvicorn's graceful shutdown)
        with concurrent.futures.ThreadPoolExecutor() as pool:
            slow = pool.submit(httpx.get, rs.urls[0] + "/who?slow=1.0", timeout=10)
            time.sleep(0.3)
            rs.sigterm(0)
            assert slow.result().status_code == 200
        assert rs.wait_exit(0) in (0, -15)        # uvicorn >= 0.29 re-raises SIGTERM after a clean shutdown
        rs.start_replica(0)
        t = time.monotonic()
        timings = rs.rolling_restart()
        rolling = time.monotonic() - t
        assert rs.ports == ports and all(a != b for a, b in zip(rs.pids, pids))
        assert all(x["exit_code"] in (0, -15) for x in timings)
        for url in rs.urls:
            assert httpx.get(url + "/health").status_code == 200
        assert rs.logs(0).count("coursekit.replicas: start") == 3 and "served" in rs.logs(0)
        print(f"replicas: rolling restart of 2 {rolling:.2f} s {timings}")
    assert rs.replicas == [] and "served" in rs.logs(0)


def test_rolling_restart_behind_the_balancer_loses_no_request(need_nginx, tiny_app, tmp_path):
    """nginx's default proxy_next_upstream (error timeout) sends a refused connection to the other
    replica, and uvicorn finishes what it accepted: a rolling restart under load fails nothing, when
    the next replica stops only once nginx sends it traffic again (measured without that wait: a few
    502 "no live upstreams" out of ~2,500 requests, since both replicas were marked failed at once)."""
    import threading

    import httpx

    from coursekit.balancer import Balancer
    from coursekit.replicas import ReplicaSet

    with ReplicaSet(tiny_app, n=2) as rs, Balancer(FRAGMENT, replicas=rs.addresses) as lb:
        codes: list[int] = []
        done = threading.Event()

        def load():
            with httpx.Client(verify=lb.ssl_context(), timeout=10) as client:
                while not done.is_set():
                    try:
                        codes.append(client.get(lb.https_url + "/who?slow=0.05").status_code)
                    except httpx.HTTPError:
                        codes.append(-1)
        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.3)
            waits = []
            rs.rolling_restart(after=lambda i, _: waits.append(lb.wait_served(rs.addresses[i])))
            time.sleep(0.3)
        finally:
            done.set()
            for w in workers:
                w.join()
        assert len(codes) > 50 and set(codes) == {200}, (sorted(set(codes)), lb.error_log()[-3000:])
        assert len(waits) == 2 and all(w < 5 for w in waits)       # ≈ fail_timeout (2 s) each
        print(f"rolling restart behind nginx: served again after {[round(w, 2) for w in waits]} s")


def test_rolling_restart_with_deregistration_loses_no_post(need_nginx, tiny_app):
    """POST is what nginx never resends once sent: a connection opened in the instant uvicorn closes
    its listening socket fails (seen: 1 POST 502 in 902 at ~150 req/s). Taken out of rotation first
    (nginx reloaded without it), a replica gets SIGTERM with only its in-flight requests, which
    uvicorn finishes; then it is restarted and put back."""
    import threading

    import httpx

    from coursekit.balancer import Balancer
    from coursekit.replicas import ReplicaSet

    with ReplicaSet(tiny_app, n=2) as rs, Balancer(FRAGMENT, replicas=rs.addresses) as lb:
        codes: list[int] = []
        done = threading.Event()

        def load():
            with httpx.Client(verify=lb.ssl_context(), timeout=10) as client:
                while not done.is_set():
                    try:
                        # One connection per request: nginx's reload closes the old workers' idle keep-alive
                        # connections, and a POST sent on one at that instant is lost (clients resend only
                        # idempotent requests). The load balancer's own behaviour, not the replicas'.
                        codes.append(client.post(lb.https_url + "/who?slow=0.2",
                                                 headers={"Connection": "close"}).status_code)
                    except httpx.HTTPError:
                        codes.append(-1)
        workers = [threading.Thread(target=load) for _ in range(8)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.5)
            started = time.monotonic()
            timings = rs.rolling_restart(balancer=lb)
            took = time.monotonic() - started
            time.sleep(0.5)
        finally:
            done.set()
            for w in workers:
                w.join()
        assert len(codes) > 50 and set(codes) == {200}, (sorted(set(codes)), lb.error_log()[-3000:])
        assert lb.replicas == rs.addresses                       # both back in rotation
        assert all(rs.logs(i).count("coursekit.replicas: start") == 2 for i in range(2))
        print(f"rolling restart with deregistration: {len(codes)} POST, 0 failed, {took:.2f} s, {timings}")



# ---- lesson helpers for §11/§12 on the demo faq-widget (real simulator, real uvicorn) ----------------
def _streams_after(sim, want: dict, timeout: float = 2.0) -> dict:
    """The simulator's stream counters once they reach `want` (or after `timeout`)."""
    from coursekit.procs import wait_until

    wait_until(lambda: all(sim.stats()["streams"][k] == v for k, v in want.items()), timeout, interval=0.02)
    return sim.stats()["streams"]


def test_sse_parser_reads_events_comments_and_multiline_data():
    from coursekit.sse import events

    lines = ["event: delta", 'data: {"text": "가"}', "", ": ping", "", "data: a", "data: b", "",
             "event: done", "data: {}", ""]
    assert list(events(lines)) == [("delta", {"text": "가"}), ("message", "a\nb"), ("done", {})]
    assert list(events(["event: done", "data: {}"])) == []  # not dispatched without its blank line


def test_widget_stream_first_delta_early_and_disconnect_abandons_upstream(own_sim):
    import httpx

    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    widget = lo.start_widget({}, name="stream")
    q = {"q": lo.LONG_QUESTION}
    full = httpx.post(widget.url + "/ask", json=q, headers={"X-API-Key": lo.WIDGET_KEY}, timeout=10).json()["reply"]
    with lesson.sim_faults(slow_stream_chunk_seconds=0.2):
        own_sim.reset()
        t = lo.stream_timing(widget.url, json=q)
        assert t.status == 200 and t.content_type.startswith("text/event-stream")
        assert t.names.count("delta") >= 5 and t.last == ("done", {"model": "gemini-3.5-flash"})
        assert t.text == full                                   # the deltas are the /ask answer
        assert t.ttfb_s < 0.3 * t.total_s, t.summary()          # measured 0.17 s vs 1.35 s
        assert own_sim.stats()["streams"] == {"started": 1, "completed": 1, "abandoned": 0}
        print(t.summary("stream: "))

        gone = lo.disconnect_after_first(widget.url, json=q)
        assert gone.names == ["delta"] and gone.text and full.startswith(gone.text)
        s = _streams_after(own_sim, {"abandoned": 1})
        assert s == {"started": 2, "completed": 1, "abandoned": 1}, s   # the widget closed its upstream stream
        time.sleep(0.4)
        assert own_sim.stats()["streams"]["completed"] == 1             # and nothing finished it later
    unauth = lo.stream_timing(widget.url, json=q, headers={"X-API-Key": "wrong"})
    assert unauth.status == 401 and unauth.last == ("http_error", {"code": "unauthorized"})


def test_widget_stream_cut_ends_with_an_error_event(own_sim):
    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    widget = lo.start_widget({}, name="stream-cut")
    with lesson.sim_faults(stream_cut_rate=1.0):
        t = lo.stream_timing(widget.url)
    assert t.status == 200 and "delta" in t.names and "done" not in t.names
    assert t.last == ("error", {"code": "upstream_malformed"}), t.events


def test_widget_cache_and_coalescing_with_burst(own_sim):
    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    plain = lo.start_widget({}, name="no-cache")
    cached = lo.start_widget({"WIDGET_CACHE_TTL": "30", "WIDGET_DEADLINE": "1.0"}, name="cache")
    with lesson.sim_faults(slow_first_token_seconds=0.5):
        own_sim.reset()
        before = lo.burst(plain.url, 20)
        assert before.statuses == [200] * 20 and set(before.caches) == {None}   # cache off: no header
        assert own_sim.stats()["requests_total"] == 20                           # one upstream call each
        own_sim.reset()
        after = lo.burst(cached.url, 100)
        print(before.summary("before: "), "|", after.summary("after: "))
    assert after.statuses == [200] * 100 and after.cache_counts == {"miss": 1, "coalesced": 99}
    assert len({b["reply"] for b in after.bodies}) == 1
    assert own_sim.stats()["requests_total"] == 1                                # 100 questions, 1 call
    hits = lo.burst(cached.url, 5, json={"q": "  요금제가   어떻게 돼요? "})        # spaces differ: same key
    assert hits.cache_counts == {"hit": 5} and own_sim.stats()["requests_total"] == 1
    assert max(hits.latencies) < 0.5
    q2 = {"q": "API 키를 잃어버렸어요"}
    with lesson.sim_faults(error_503_rate=1.0):
        failed = lo.burst(cached.url, 1, json=q2)
    assert failed.statuses == [503] and failed.caches == [None]
    assert lo.burst(cached.url, 1, json=q2).caches == ["miss"]                   # the error was not cached
    assert lo.burst(cached.url, 1, json=q2).caches == ["hit"]
