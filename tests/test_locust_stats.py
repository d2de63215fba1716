"""coursekit.locust_stats: Locust's final numbers come from its --json-file, not its lagging CSV."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from coursekit import locust_stats

LOCUSTFILE = """
from locust import HttpUser, constant, task


class U(HttpUser):
    wait_time = constant(0.02)

    @task
    def hit(self):
        self.client.get("/")
"""


def test_percentile_is_locusts_own():
    # 100 requests: 90 at 100 ms, 9 at 1000 ms, 1 at 5000 ms
    times = {100: 90, 1000: 9, 5000: 1}
    assert locust_stats.percentile(times, 100, 0.50) == 0.1
    assert locust_stats.percentile(times, 100, 0.95) == 1.0
    assert locust_stats.percentile(times, 100, 0.99) == 5.0
    assert locust_stats.percentile(times, 100, 1.0) == 5.0
    assert locust_stats.percentile({}, 0, 0.95) == 0.0


def test_json_counts_every_request_the_server_answered(tmp_path):
    """The CSV is rewritten once a second and misses the end of the run (measured: 78 of 110
    requests); the JSON statistics count every answered request but those in flight at the stop."""
    served = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE, encoding="utf-8")
    users = 2
    try:
        subprocess.run([sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "-u", str(users),
                        "-r", str(users), "-t", "3s", "--host", f"http://127.0.0.1:{server.server_port}",
                        "--json-file", "run", "--csv", "run", "--only-summary", "--loglevel", "WARNING",
                        "--stop-timeout", "0"], cwd=tmp_path, capture_output=True, timeout=60, check=True)
    finally:
        server.shutdown()
    stats = locust_stats.read(tmp_path / "run", seconds=3)
    agg = stats["Aggregated"]
    assert len(served) - users <= agg.requests <= len(served), (agg, len(served))
    assert agg.failures == 0 and agg.rps > 0 and 0 < agg.p50 <= agg.p95 <= agg.p99
    assert stats["GET /"].requests == agg.requests
