"""Simulator throughput vs a bare FastAPI endpoint returning the same bytes.

Both servers are single uvicorn worker processes (uvloop + httptools, no access log) on
loopback; the same load generator, with the same concurrency and duration, loads each
in a separate process: `wrk` when it is installed (Debian: apt-get install wrk), else a
small asyncio keep-alive HTTP/1.1 client (uvloop) in a child process.

Prints both requests/s and the ratio simulator / bare. The simulator must reach at least
half of the bare endpoint (ratio >= 0.5), so it is never the bottleneck of a load test.

    make bench        # or: .venv/bin/python benchmarks/simulator_throughput.py [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from coursekit.simulator import SimulatorProcess  # noqa: E402

PATH = "/v1beta/models/gemini-3.5-flash:generateContent"
BODY = json.dumps({"contents": [{"parts": [{"text": "요금제가 어떻게 돼요?"}], "role": "user"}],
                   "generationConfig": {"candidateCount": 1}}, ensure_ascii=False).encode()
KEY = "bench-key"

BARE_APP = textwrap.dedent('''
    import os
    from fastapi import FastAPI, Request, Response
    PAYLOAD = open(os.environ["BENCH_PAYLOAD"], "rb").read()
    app = FastAPI()

    @app.post("/v1beta/models/{action}")
    async def generate(action: str, request: Request):
        await request.body()
        return Response(content=PAYLOAD, media_type="application/json; charset=UTF-8")
''')

LOADGEN = textwrap.dedent('''
    # Minimal keep-alive HTTP/1.1 load generator: N connections, each sends one request
    # at a time and reads the response (Content-Length framing) until the deadline.
    import asyncio, json, sys, time
    import uvloop
    host, port, path, body_file, key, conns, duration = sys.argv[1:8]
    port, conns, duration = int(port), int(conns), float(duration)
    body = open(body_file, "rb").read()
    req = (f"POST {path} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\nContent-Type: application/json\\r\\n"
           f"x-goog-api-key: {key}\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n").encode() + body
    done = 0; errors = 0

    async def worker(deadline):
        global done, errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            writer.write(req)
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\\r\\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 200: done += 1
            else: errors += 1
        writer.close()

    async def main():
        deadline = time.perf_counter() + duration
        t = time.perf_counter()
        await asyncio.gather(*[worker(deadline) for _ in range(conns)])
        print(json.dumps({"requests": done, "errors": errors, "seconds": time.perf_counter() - t}))

    uvloop.run(main())
''')

WRK_LUA = textwrap.dedent('''
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.headers["x-goog-api-key"] = "%s"
    local f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=BODY, headers={"x-goog-api-key": KEY, "content-type": "application/json"},
                       timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} 가 준비되지 않았습니다")


def load(tool: str, port: int, conns: int, duration: float, tmp: str) -> tuple[float, int, int]:
    body_file = os.path.join(tmp, "body.json")
    if tool == "wrk":
        lua = os.path.join(tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA % (KEY, body_file))
        out = subprocess.run(["wrk", "-t", "1", "-c", str(conns), "-d", f"{duration:g}s", "-s", lua,
                              f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True,
                             timeout=duration + 30, check=True).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return rps, total, int(bad.group(1)) if bad else 0
    script = os.path.join(tmp, "loadgen.py")
    with open(script, "w") as f:
        f.write(LOADGEN)
    out = subprocess.run([sys.executable, script, "127.0.0.1", str(port), PATH, body_file, KEY, str(conns),
                          str(duration)], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    r = json.loads(out)
    return r["requests"] / r["seconds"], r["requests"], r["errors"]


def main() -> int:
    ap = argparse.ArgumentParser(description="시뮬레이터 처리량 벤치마크 (시뮬레이터 ÷ 같은 바이트를 돌려주는 FastAPI)")
    ap.add_argument("--duration", type=float, default=5.0, help="각 서버를 부하하는 시간(초)")
    ap.add_argument("--connections", type=int, default=50, help="동시 연결 수")
    ap.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto", help="부하 생성기")
    args = ap.parse_args()
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")

    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(latency="zero") as sim:
        with open(os.path.join(tmp, "body.json"), "wb") as f:
            f.write(BODY)
        sample = httpx.post(sim.base_url + PATH, content=BODY,
                            headers={"x-goog-api-key": KEY, "content-type": "application/json"})
        assert sample.status_code == 200, sample.text
        payload = os.path.join(tmp, "payload.json")
        with open(payload, "wb") as f:
            f.write(sample.content)
        app_dir = os.path.join(tmp, "bare")
        os.mkdir(app_dir)
        with open(os.path.join(app_dir, "bare_app.py"), "w") as f:
            f.write(BARE_APP)
        port = free_port()
        bare = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                                 "--no-access-log", "--log-level", "warning"],
                                cwd=app_dir, env=dict(os.environ, PYTHONPATH=app_dir, BENCH_PAYLOAD=payload),
                                stdin=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}{PATH}")
            results = {}
            for name, p in (("simulator", sim.port), ("bare FastAPI", port)):
                load(tool, p, args.connections, 1.0, tmp)             # warm-up
                results[name] = load(tool, p, args.connections, args.duration, tmp)
        finally:
            bare.terminate()
            bare.wait(timeout=10)

    (sim_rps, sim_n, sim_err), (bare_rps, bare_n, bare_err) = results["simulator"], results["bare FastAPI"]
    ratio = sim_rps / bare_rps
    print(f"부하 생성기: {tool}, 동시 연결 {args.connections}, 각 {args.duration:g}초, 단일 워커 uvicorn 두 개, CPU {os.cpu_count()}개")
    print(f"  simulator     : {sim_rps:9.0f} req/s  ({sim_n} 요청, 실패 {sim_err})")
    print(f"  bare FastAPI  : {bare_rps:9.0f} req/s  ({bare_n} 요청, 실패 {bare_err})")
    print(f"  ratio (simulator / bare) = {ratio:.2f}  (기준 >= 0.5: {'통과' if ratio >= 0.5 else '실패'})")
    return 0 if ratio >= 0.5 and sim_err == 0 and bare_err == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
