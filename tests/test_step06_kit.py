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


# ---- lesson helpers for §13–§16 on the demo faq-widget (batching, token budgets, A/B, canary) ---------------
def _expected_variant(experiment: str, user: str, variants: dict[str, float]) -> str:
    """The documented assignment, recomputed: first 8 bytes of sha256(experiment:user) / 2**64, cumulative."""
    import hashlib

    bucket = int.from_bytes(hashlib.sha256(f"{experiment}:{user}".encode()).digest()[:8], "big") / 2**64
    total = 0.0
    for name, weight in variants.items():
        total += weight
        if bucket < total:
            return name
    return name


def test_widget_batch_bounds_concurrency_and_keeps_partial_failures(own_sim):
    import httpx

    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    widget = lo.start_widget({"WIDGET_BATCH_CONCURRENCY": "2"}, name="batch")
    key = {"X-API-Key": lo.WIDGET_KEY}
    with lesson.sim_faults(slow_first_token_seconds=0.2):
        bt = lo.batch_timing(widget.url, n=6, sim=own_sim)
    print(bt.summary("batch: "))
    assert bt.batch_status == 200 and bt.ok == 6 and bt.n == 6
    assert bt.sequential_calls == bt.batch_calls == 6
    assert bt.sequential_in_flight == 1 and bt.batch_in_flight == 2       # the bound, reached and not passed
    assert bt.speedup > 1.5                                                # measured ≈ 1.9 (6 x 0.2 s vs 3 x 0.2 s)
    qs = lo._kb_questions()[:6]
    one = httpx.post(widget.url + "/ask", json={"q": qs[3]}, headers=key, timeout=10).json()
    assert [r["reply"] for r in bt.results][3] == one["reply"]            # results in the order asked
    with lesson.sim_faults(safety_block_rate=1.0):
        r = httpx.post(widget.url + "/ask/batch", json={"qs": qs[:2]}, headers=key, timeout=10)
    assert r.status_code == 200 and r.json()["results"] == [{"ok": False, "code": "content_blocked"}] * 2
    assert httpx.post(widget.url + "/ask/batch", json={"qs": ["a"] * 17}, headers=key).status_code == 422
    assert httpx.post(widget.url + "/ask/batch", json={"qs": []}, headers=key).status_code == 422
    assert httpx.post(widget.url + "/ask/batch", json={"qs": ["a"]}).status_code == 401


def test_widget_token_budget_truncates_and_never_caches_a_cut_answer(own_sim):
    import httpx

    from coursekit import lesson_optimization as lo

    key = {"X-API-Key": lo.WIDGET_KEY}
    q = {"q": lo.LONG_QUESTION}
    pro = lo.start_widget({"WIDGET_MODEL": "gemini-3.5-pro"}, name="pro")
    own_sim.reset()
    full = httpx.post(pro.url + "/ask", json=q, headers=key, timeout=10).json()
    free = lo.token_summary(own_sim)
    assert full["truncated"] is False and free["thoughts_tokens"] > 0 and free["truncated"] == 0
    capped = lo.start_widget({"WIDGET_MODEL": "gemini-3.5-pro", "WIDGET_MAX_OUTPUT_TOKENS": "20",
                              "WIDGET_THINKING_BUDGET": "0", "WIDGET_CACHE_TTL": "30"}, name="budget")
    own_sim.reset()
    first = httpx.post(capped.url + "/ask", json=q, headers=key, timeout=10)
    again = httpx.post(capped.url + "/ask", json=q, headers=key, timeout=10)
    cut = lo.token_summary(own_sim)
    print(f"budget: without {free}, with {cut}")
    assert first.json()["truncated"] is True and full["reply"].startswith(first.json()["reply"][:10])
    assert again.headers["x-cache"] == "miss" and own_sim.upstream_calls() == 2   # a cut answer is not cached
    assert cut["truncated"] == 2 and cut["thoughts_tokens"] == 0 and cut["output_tokens"] <= 40
    assert cut["cost_usd"] < free["cost_usd"]


def test_widget_ab_split_is_sticky_weighted_and_scored_from_the_sim_log(own_sim):
    import httpx

    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    variants = {"v1": 0.3, "v2": 0.7}
    widget = lo.start_widget({"WIDGET_AB_VARIANTS": "v1:0.3,v2:0.7", "WIDGET_AB_EXPERIMENT": "odd-exp"}, name="ab")
    own_sim.reset()
    split = lo.users_split(widget.url, n_users=300, repeats=2)
    print(split.summary("ab: "))
    assert split.statuses == {200: 600} and split.sticky
    assert all(v == _expected_variant("odd-exp", u, variants) for u, v, *_ in split.rows)
    assert abs(split.shares()["v1"] - 0.3) < 0.07 and sum(split.counts.values()) == 300
    quality = lo.variant_quality(own_sim)
    print("quality:", quality)
    assert quality["v1"]["n"] + quality["v2"]["n"] == 600
    assert quality["v2"]["good_rate"] == 1.0                  # grounded prompt: refuses what is not in the KB
    assert 0.6 < quality["v1"]["good_rate"] < 0.85            # v1 answers the 25 % off-KB questions anyway
    assert quality["v1"]["outcomes"]["generic"] == quality["v1"]["bad"]
    early = lo.variant_quality(own_sim, first=10)
    assert early["v1"]["n"] == early["v2"]["n"] == 10 and early["v2"]["good"] == 10
    assert (quality["v1"]["output_tokens"] / quality["v1"]["n"]) > (quality["v2"]["output_tokens"] / quality["v2"]["n"])
    key = {"X-API-Key": lo.OTHER_KEY}
    no_id = [httpx.post(widget.url + "/ask", json={"q": "요금제?"}, headers=key).headers["x-variant"] for _ in range(3)]
    assert len(set(no_id)) == 1                                # no user_id: the key's hash is the user
    assert lo.metric(widget.url, "widget_ab_requests_total") == 600 + 3   # (metric() follows /metrics -> /metrics/)
    assert lo.widget_prompts().keys() == {"v1", "v2"}
    plain = lo.start_widget({"WIDGET_PROMPT": "v1"}, name="no-ab")            # no experiment, the old prompt
    own_sim.reset()
    r = httpx.post(plain.url + "/ask", json={"q": "대표이사가 누구예요?", "user_id": "u1"}, headers=key)
    assert "x-variant" not in r.headers and "variant" not in r.json()
    assert list(lo.variant_quality(own_sim)) == ["v1"] and "답할 수 없습니다" not in r.json()["reply"]
    with pytest.raises(lesson.LessonError, match="WIDGET_AB_VARIANTS"):
        lo.start_widget({"WIDGET_AB_VARIANTS": "v1:0.5,v3:0.5"}, name="ab-bad")
    with pytest.raises(lesson.LessonError, match="한 번에 하나만"):
        lo.start_widget({"WIDGET_AB_VARIANTS": "v1:0.5,v2:0.5", "WIDGET_CANARY_MODEL": "gemini-3.5-pro"},
                        name="ab-canary")


def test_widget_canary_rolls_back_a_failing_model_only_when_rollback_is_on(own_sim):
    from coursekit import lesson
    from coursekit import lesson_optimization as lo

    canary = {"WIDGET_CANARY_MODEL": "gemini-3.5-pro", "WIDGET_CANARY_SHARE": "0.3",
              "WIDGET_CANARY_MIN_REQUESTS": "5"}
    healthy = lo.canary_timeline(lo.start_widget(canary, name="canary-ok").url, n=60)
    assert healthy.errors == 0 and healthy.state["state"] == "active" and 8 <= healthy.canary_requests <= 30
    on = lo.start_widget(canary, name="canary-on")
    off = lo.start_widget({**canary, "WIDGET_CANARY_ROLLBACK": "off"}, name="canary-off")
    with lesson.sim_faults(fault_models=["gemini-3.5-pro"], error_503_rate=1.0):
        with_rb = lo.canary_timeline(on.url, n=80)
        without = lo.canary_timeline(off.url, n=80)
        tolerant = lo.canary_timeline(lo.start_widget({**canary, "WIDGET_CANARY_MAX_ERROR_INCREASE": "1.0"},
                                                      name="canary-tolerant").url, n=60)
        own_sim.reset()
        after = lo.canary_timeline(on.url, n=20)
    assert tolerant.state["state"] == "active" and not tolerant.state["rule_fired"]
    assert tolerant.errors == tolerant.canary_requests >= 6                # past MIN_REQUESTS, yet within 1.0
    print(healthy.summary("healthy: "), "|", with_rb.summary("rollback on: "), "|", without.summary("off: "))
    assert with_rb.state["state"] == "rolled_back" and with_rb.state["reason"] == "error_rate"
    assert 5 <= with_rb.canary_requests <= 8 and with_rb.errors == with_rb.canary_requests   # 4 users in flight
    assert all(ok for _, _, ok, _ in with_rb.rows[with_rb.last_canary + 1:])
    assert after.errors == 0 and after.canary_requests == 0
    assert own_sim.stats()["by_model"].get("gemini-3.5-pro", 0) == 0        # no call to the rolled-back model
    assert without.state["state"] == "active" and without.state["rule_fired"] is True
    assert without.errors == without.canary_requests >= 12                  # ≈ 0.3 x 80, all failed
    settled = with_rb.last_canary + 20                                      # windows that start after the rollback
    assert settled < 80 and max(with_rb.rolling_error_rate(20)[settled:]) == 0
    assert max(without.rolling_error_rate(20)[settled:]) > 0
    assert lo.metric(on.url, "widget_canary_requests_total") == 80 + 20


def test_locust_run_compares_before_and_after_with_step04_locust(own_sim):
    """§17's closing comparison: step 04's headless Locust against the widget, the simulator's counters per request."""
    from coursekit import lesson_optimization as lo

    own_sim.configure(latency="zero")
    before = lo.locust_run(lo.start_widget({}, name="locust-before").url, own_sim, users=4, seconds=3)
    after = lo.locust_run(lo.start_widget({"WIDGET_CACHE_TTL": "60", "WIDGET_MAX_OUTPUT_TOKENS": "256",
                                           "WIDGET_THINKING_BUDGET": "0"}, name="locust-after").url,
                          own_sim, users=4, seconds=3)
    print(before.summary("before: "), "|", after.summary("after: "))
    assert before.requests > 20 and after.requests > 20
    assert before.locust.failures == 0 and after.locust.failures == 0
    assert 0.9 <= before.calls_per_request <= 1.1                    # no cache: one upstream call per answer
    assert after.upstream_calls <= 36 < after.requests       # at most one miss per KB question (measured 31 of 64)
    assert after.cost_per_request < before.cost_per_request and before.tokens["cost_usd"] > 0
    assert after.tokens["truncated"] == 0                              # 256 is above every FAQ answer
    assert "widget_fallbacks" in before.widget_metrics               # family names, as the parser gives them
    assert not any("token" in n or "cost" in n for n in before.widget_metrics)   # hence the simulator's accounting
