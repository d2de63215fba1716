"""06단계 2부 단위 테스트 (TODO 23, lesson §15 'A/B 테스트'): 판정 함수 decide (표본 부족, 차이 없음, 승자, 이름을 바꿔도
같은 승자, alpha 와 최소 표본 수), 메트릭 읽기 (다른 레이블은 더함, 피드백이 없는 변형), 그리고 CLI 를 하위 프로세스로:
이 테스트가 띄운 작은 HTTP 서버의 /metrics 와 Prometheus HTTP API, 닿지 않는 주소(종료 코드 2, 한국어 stderr)."""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import ab_report
import pytest
from scipy.stats import fisher_exact

STEP_DIR = Path(__file__).resolve().parents[1]
EXPERIMENT = "prompt-v2-vs-v1"


def counts(a_up, a_down, b_up, b_down, a="control", b="treatment"):
    return {a: {"up": a_up, "down": a_down}, b: {"up": b_up, "down": b_down}}


# --------------------------------------------------------------------------- decide
def test_clear_difference_with_enough_data_has_a_winner():
    result = ab_report.decide(counts(40, 60, 60, 40), alpha=0.05, min_samples=100)
    assert result.decision == "winner" and result.winner == "treatment"
    assert result.p_value == pytest.approx(fisher_exact([[40, 60], [60, 40]]).pvalue)
    assert result.p_value < 0.05
    assert result.variants["treatment"] == {"up": 60, "down": 40, "n": 100, "up_rate": 0.6}
    assert "treatment" in result.reason


def test_swapped_names_pick_the_same_variant():
    result = ab_report.decide(counts(60, 40, 40, 60), alpha=0.05, min_samples=100)
    assert result.decision == "winner" and result.winner == "control"
    swapped = ab_report.decide(counts(40, 60, 60, 40, a="zeta", b="alpha"), alpha=0.05, min_samples=100)
    assert swapped.winner == "alpha"


def test_too_few_ratings_is_insufficient_data_and_says_how_many_more():
    result = ab_report.decide(counts(2, 8, 9, 1), alpha=0.05, min_samples=100)
    assert result.decision == "insufficient_data" and result.winner is None and result.p_value is None
    assert "90개 더" in result.reason


def test_one_short_variant_is_enough_to_wait():
    result = ab_report.decide(counts(400, 600, 60, 39), alpha=0.05, min_samples=100)
    assert result.decision == "insufficient_data" and "treatment 은 1개 더" in result.reason
    assert "control" not in result.reason.split("필요")[0]


def test_equal_rates_with_large_samples_is_no_difference():
    result = ab_report.decide(counts(500, 500, 512, 488), alpha=0.05, min_samples=100)
    assert result.decision == "no_difference" and result.winner is None
    assert result.p_value == pytest.approx(fisher_exact([[500, 500], [512, 488]]).pvalue) and result.p_value > 0.5
    assert "아직 차이가 있다고 말할 수 없음" in result.reason


def test_custom_alpha_is_honoured():
    data = counts(40, 60, 60, 40)  # p ≈ 0.0071
    assert ab_report.decide(data, alpha=0.01, min_samples=100).decision == "winner"
    assert ab_report.decide(data, alpha=0.005, min_samples=100).decision == "no_difference"


def test_custom_min_samples_is_honoured():
    data = counts(5, 25, 25, 5)  # n = 30 each, p ≈ 2e-7
    assert ab_report.decide(data, alpha=0.05, min_samples=31).decision == "insufficient_data"
    assert ab_report.decide(data, alpha=0.05, min_samples=30).decision == "winner"


def test_exactly_two_variants():
    with pytest.raises(ab_report.InputError, match="두 개"):
        ab_report.decide({"a": {"up": 1, "down": 1}}, 0.05, 1)
    with pytest.raises(ab_report.InputError):
        ab_report.decide({**counts(1, 1, 1, 1), "c": {"up": 1, "down": 1}}, 0.05, 1)


# --------------------------------------------------------------------------- 메트릭 읽기
def exposition(rows: dict[tuple[str, str, str], float], requests: dict[tuple[str, str], float] | None = None,
               extra: str = "") -> str:
    """서비스의 /metrics 와 같은 모양 (OTel 의 Prometheus 내보내기: otel_scope 레이블이 붙음)."""
    lines = ["# HELP llm_experiment_feedback_total Feedback per experiment variant",
             "# TYPE llm_experiment_feedback_total counter"]
    for (experiment, variant, rating), value in rows.items():
        lines.append(f'llm_experiment_feedback_total{{experiment="{experiment}",otel_scope_name="llm-chat",'
                     f'rating="{rating}",variant="{variant}"{extra}}} {value}')
    if requests:
        lines += ["# HELP llm_experiment_requests_total Requests per experiment variant",
                  "# TYPE llm_experiment_requests_total counter"]
        for (experiment, variant), value in requests.items():
            lines.append(f'llm_experiment_requests_total{{experiment="{experiment}",variant="{variant}"}} {value}')
    return "\n".join(lines) + "\n"


def rows_of(data: dict, experiment=EXPERIMENT) -> dict:
    return {(experiment, v, r): float(n) for v, c in data.items() for r, n in c.items()}


def test_collect_sums_other_labels_and_ignores_other_experiments():
    text = exposition(rows_of(counts(40, 60, 60, 40))) + exposition(rows_of(counts(1, 2, 3, 4)), extra=',replica="b"')
    text += exposition(rows_of(counts(7, 7, 7, 7), experiment="other-exp")).split("\n", 2)[2]
    feedback, requests = ab_report.parse_exposition(text)
    experiment, found = ab_report.collect(feedback, requests, EXPERIMENT)
    assert experiment == EXPERIMENT and found == counts(41, 62, 63, 44)


def test_collect_picks_the_only_experiment_and_refuses_to_guess():
    feedback, requests = ab_report.parse_exposition(exposition(rows_of(counts(1, 2, 3, 4))))
    assert ab_report.collect(feedback, requests, None)[0] == EXPERIMENT
    text = exposition({**rows_of(counts(1, 2, 3, 4)), **rows_of(counts(1, 2, 3, 4), experiment="other-exp")})
    feedback, requests = ab_report.parse_exposition(text)
    with pytest.raises(ab_report.InputError, match="--experiment"):
        ab_report.collect(feedback, requests, None)
    with pytest.raises(ab_report.InputError, match="데이터가 없습니다"):
        ab_report.collect(feedback, requests, "missing-exp")


def test_variant_without_feedback_comes_from_the_requests_metric():
    text = exposition({(EXPERIMENT, "control", "up"): 120.0, (EXPERIMENT, "control", "down"): 80.0},
                      requests={(EXPERIMENT, "control"): 900.0, (EXPERIMENT, "treatment"): 870.0})
    experiment, found = ab_report.collect(*ab_report.parse_exposition(text), EXPERIMENT)
    assert found == {"control": {"up": 120, "down": 80}, "treatment": {"up": 0, "down": 0}}
    assert ab_report.decide(found, 0.05, 100).decision == "insufficient_data"


# --------------------------------------------------------------------------- CLI (하위 프로세스)
class Server:
    """/metrics 는 exposition 글, /api/v1/query 는 Prometheus HTTP API 의 벡터 결과."""

    def __init__(self, metrics: str = "", vector: list | None = None, requests_vector: list | None = None):
        self.metrics, self.vector, self.requests_vector = metrics, vector or [], requests_vector or []
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urlparse(self.path)
                if url.path == "/metrics":
                    body, kind = outer.metrics.encode(), "text/plain; version=0.0.4; charset=utf-8"
                elif url.path == "/api/v1/query":
                    query = parse_qs(url.query)["query"][0]
                    outer.queries.append(query)
                    result = outer.requests_vector if "requests" in query else outer.vector
                    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                    kind = "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ab_report", *args], cwd=STEP_DIR, capture_output=True, text=True,
                          timeout=60)


def test_cli_json_from_metrics_url():
    with Server(exposition(rows_of(counts(40, 60, 60, 40)))) as server:
        done = cli("--metrics-url", server.url + "/metrics", "--experiment", EXPERIMENT, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"experiment", "variants", "decision", "winner", "p_value", "alpha", "min_samples", "reason"}
    assert data["decision"] == "winner" and data["winner"] == "treatment"
    assert data["variants"]["control"] == {"up": 40, "down": 60, "n": 100, "up_rate": 0.4}
    assert data["alpha"] == 0.05 and data["min_samples"] == 100


def test_cli_flags_and_korean_text():
    with Server(exposition(rows_of(counts(5, 25, 25, 5)))) as server:
        text = cli("--metrics-url", server.url + "/metrics", "--min-samples", "30", "--alpha", "0.01")
        short = cli("--metrics-url", server.url + "/metrics", "--min-samples", "31", "--json")
    assert text.returncode == 0, text.stderr
    assert "판정: 차이 있음 -> treatment" in text.stdout and "좋아요" in text.stdout
    assert json.loads(short.stdout)["decision"] == "insufficient_data"


def test_cli_from_prometheus_api():
    vector = [{"metric": {"experiment": EXPERIMENT, "variant": v, "rating": r}, "value": [1700000000.0, str(n)]}
              for v, c in counts(500, 500, 512, 488).items() for r, n in c.items()]
    with Server(vector=vector) as server:
        done = cli("--prometheus", server.url, "--experiment", EXPERIMENT, "--json")
        queries = list(server.queries)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == "no_difference"
    assert ab_report.PROMQL in queries


def test_cli_unreachable_url_exits_2_in_korean():
    with Server() as server:
        url = server.url  # 닫은 뒤의 포트: 연결 거부
    done = cli("--metrics-url", url + "/metrics", "--experiment", EXPERIMENT)
    assert done.returncode == 2 and done.stdout == ""
    assert "닿지 않습니다" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args, words", [
    ((), "옵션 오류"),  # 출처 없음
    (("--metrics-url", "http://127.0.0.1:9/metrics", "--alpha", "1.5"), "--alpha"),
    (("--metrics-url", "http://127.0.0.1:9/metrics", "--min-samples", "zero"), "옵션 오류"),
])
def test_cli_bad_flags_exit_2(args, words):
    done = cli(*args)
    assert done.returncode == 2 and words in done.stderr


def test_cli_three_variants_or_no_data_exit_2():
    three = {**rows_of(counts(1, 2, 3, 4)), (EXPERIMENT, "third", "up"): 5.0}
    with Server(exposition(three)) as server:
        many = cli("--metrics-url", server.url + "/metrics", "--experiment", EXPERIMENT)
        none = cli("--metrics-url", server.url + "/metrics", "--experiment", "missing-exp")
    assert many.returncode == 2 and "정확히 두 변형" in many.stderr
    assert none.returncode == 2 and "데이터가 없습니다" in none.stderr
