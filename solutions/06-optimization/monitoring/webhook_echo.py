"""Alertmanager 웹훅을 받아 알림을 한 줄씩 찍는 작은 수신기 (compose 의 webhook 서비스).

실제 운영에서는 Slack, PagerDuty 같은 곳이 받습니다. 여기서는 `docker compose logs -f webhook` 으로
Alertmanager 가 무엇을 언제 보내는지(firing, resolved) 봅니다. 표준 라이브러리만 씁니다.
"""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = {}
        for alert in payload.get("alerts", []):
            labels, notes = alert.get("labels", {}), alert.get("annotations", {})
            print(f"[{alert.get('status')}] {labels.get('alertname')} ({labels.get('severity')}): "
                  f"{notes.get('summary', '')} — {notes.get('runbook_url', '')}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # 요청마다 찍는 기본 접근 로그는 끕니다
        pass


if __name__ == "__main__":
    print("웹훅 수신기: 0.0.0.0:5001/alerts 에서 기다립니다", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 5001), Handler).serve_forever()
