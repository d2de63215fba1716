"""06단계 2부: A/B 테스트 결과 보고서 (lesson §15 'A/B 테스트'). 운영자가 쓰는 도구 (서비스 이미지에는 없음).

    python -m ab_report --metrics-url http://127.0.0.1:8000/metrics --experiment prompt-v2-vs-v1
    python -m ab_report --prometheus http://127.0.0.1:9090 --experiment prompt-v2-vs-v1 --json

변형별 피드백(`llm_experiment_feedback_total{experiment, variant, rating}`)을 읽어 두 변형의 좋아요 비율을
Fisher 정확 검정(`scipy.stats.fisher_exact`, 2x2 표 [[up_a, down_a], [up_b, down_b]])으로 비교합니다.
- --metrics-url: 복제본 하나의 /metrics (Prometheus 글 형식, prometheus_client.parser 로 읽음). 복제본이 여럿이면
  그 복제본이 받은 피드백만 보입니다.
- --prometheus: Prometheus 의 HTTP API (/api/v1/query) 로
  `sum by (experiment, variant, rating) (llm_experiment_feedback_total)`: 모든 복제본을 더한 값.

판정 (`decide`):
- 변형 하나라도 평가가 --min-samples 개보다 적으면 "insufficient_data" (몇 개 더 필요한지 알려 줌, p 값은 보지 않음);
- p >= alpha 면 "no_difference" (아직 차이가 있다고 말할 수 없음);
- p < alpha 면 "winner" (좋아요 비율이 높은 쪽).
표본 수는 미리 정하고 그만큼 모인 뒤에 한 번 판정합니다: 모이는 동안 계속 들여다보다 처음 p < 0.05 에서 멈추면
(엿보기, peeking) 차이가 없어도 "차이 있음" 이 나올 확률이 alpha 보다 훨씬 커집니다.

종료 코드: 0 = 분석을 마침 (판정이 무엇이든), 2 = 입력 문제 (닿지 않는 주소, 데이터 없음, 잘못된 옵션). 오류는 stderr 에 한국어.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from dataclasses import dataclass, field

FEEDBACK_METRIC = "llm_experiment_feedback_total"
REQUESTS_METRIC = "llm_experiment_requests_total"  # 피드백이 아직 없는 변형의 이름도 알기 위해
PROMQL = "sum by (experiment, variant, rating) (llm_experiment_feedback_total)"
PROMQL_REQUESTS = "sum by (experiment, variant) (llm_experiment_requests_total)"
HTTP_TIMEOUT_SECONDS = 10.0

DECISION_TEXT = {
    "insufficient_data": "표본 부족",
    "no_difference": "아직 차이가 있다고 말할 수 없음",
    "winner": "차이 있음",
}


class InputError(Exception):
    """보고서를 만들 수 없는 입력 (종료 코드 2, 한국어 메시지)."""


@dataclass
class Decision:
    decision: str  # "insufficient_data" | "no_difference" | "winner"
    winner: str | None
    p_value: float | None
    reason: str
    variants: dict[str, dict] = field(default_factory=dict)  # 이름 -> {"up", "down", "n", "up_rate"}


def summarize(counts: dict[str, dict[str, int]]) -> dict[str, dict]:
    """{변형: {"up", "down"}} -> {변형: {"up", "down", "n", "up_rate"}} (n 이 0 이면 up_rate 는 None)."""
    out = {}
    for name, c in counts.items():
        up, down = int(c.get("up", 0)), int(c.get("down", 0))
        n = up + down
        out[name] = {"up": up, "down": down, "n": n, "up_rate": up / n if n else None}
    return out


def decide(counts: dict[str, dict[str, int]], alpha: float = 0.05, min_samples: int = 100) -> Decision:
    """변형 둘의 피드백 수로 판정합니다. counts = {변형: {"up": 좋아요 수, "down": 싫어요 수}} (정확히 두 변형)."""
    if len(counts) != 2:
        raise InputError(f"변형 두 개를 비교합니다 (지금 {len(counts)}개: {sorted(counts)})")
    variants = summarize(counts)
    (a, sa), (b, sb) = variants.items()
    # BEGIN SOLUTION
    short = {name: min_samples - s["n"] for name, s in variants.items() if s["n"] < min_samples}
    if short:
        more = ", ".join(f"{name} 은 {k}개 더" for name, k in short.items())
        return Decision("insufficient_data", None, None,
                        f"표본이 부족합니다: {more} 필요합니다 (변형마다 평가 {min_samples}개 이상). "
                        "미리 정한 수가 모일 때까지 기다린 뒤 한 번 판정하세요.", variants)
    from scipy.stats import fisher_exact

    p_value = float(fisher_exact([[sa["up"], sa["down"]], [sb["up"], sb["down"]]]).pvalue)
    if p_value >= alpha:
        return Decision("no_difference", None, p_value,
                        f"아직 차이가 있다고 말할 수 없음: p = {p_value:.4g} >= alpha {alpha:g} "
                        f"({a} {sa['up_rate']:.1%}, {b} {sb['up_rate']:.1%}).", variants)
    winner, loser = (a, b) if sa["up_rate"] > sb["up_rate"] else (b, a)
    return Decision("winner", winner, p_value,
                    f"{winner} 의 좋아요 비율({variants[winner]['up_rate']:.1%})이 {loser}"
                    f"({variants[loser]['up_rate']:.1%})보다 높고, 차이가 우연이라고 보기 어렵습니다 "
                    f"(p = {p_value:.4g} < alpha {alpha:g}).", variants)
    # STARTER
    # # TODO 23 (lesson §15 'A/B 테스트'): 판정하세요.
    # # 1) 변형 하나라도 평가 수 n 이 min_samples 보다 적으면 Decision("insufficient_data", None, None, <몇 개 더>, variants)
    # # 2) scipy.stats.fisher_exact([[up_a, down_a], [up_b, down_b]]).pvalue 가 alpha 이상이면 "no_difference"
    # # 3) alpha 보다 작으면 "winner" (좋아요 비율이 높은 변형). 비율만 보고 고르면 우연한 차이도 승자가 됩니다.
    # raise NotImplementedError("TODO 23 (lesson §15 'A/B 테스트'): ab_report.decide 를 완성하세요")
    # END SOLUTION


# --------------------------------------------------------------------------- 읽기
def _http_get(url: str, params: dict | None = None):
    import httpx

    try:
        response = httpx.get(url, params=params, timeout=HTTP_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise InputError(f"{url} 에 닿지 않습니다 ({type(exc).__name__}: {exc})") from exc
    if response.status_code != 200:
        raise InputError(f"{url} 가 HTTP {response.status_code} 로 답했습니다")
    return response


def parse_exposition(text: str) -> tuple[list[tuple[dict, float]], list[dict]]:
    """Prometheus 글 형식 -> (피드백 표본 [(레이블, 값)], 요청 표본의 레이블 [...])."""
    from prometheus_client.parser import text_string_to_metric_families

    feedback, requests = [], []
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == FEEDBACK_METRIC:
                    feedback.append((dict(sample.labels), float(sample.value)))
                elif sample.name == REQUESTS_METRIC:
                    requests.append(dict(sample.labels))
    except ValueError as exc:
        raise InputError(f"메트릭을 Prometheus 글 형식으로 읽지 못했습니다: {exc}") from exc
    return feedback, requests


def read_metrics_url(url: str) -> tuple[list[tuple[dict, float]], list[dict]]:
    return parse_exposition(_http_get(url).text)


def _query(base: str, promql: str) -> list[dict]:
    url = base.rstrip("/") + "/api/v1/query"
    response = _http_get(url, params={"query": promql})
    try:
        body = response.json()
        if body.get("status") != "success":
            raise InputError(f"Prometheus 질의가 실패했습니다: {body.get('error', body)}")
        return body["data"]["result"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{url} 의 답이 Prometheus HTTP API 의 모양이 아닙니다 ({exc})") from exc


def read_prometheus(base: str) -> tuple[list[tuple[dict, float]], list[dict]]:
    feedback = [(row["metric"], float(row["value"][1])) for row in _query(base, PROMQL)]
    requests = [row["metric"] for row in _query(base, PROMQL_REQUESTS)]
    return feedback, requests


def collect(feedback: list[tuple[dict, float]], requests: list[dict],
            experiment: str | None) -> tuple[str, dict[str, dict[str, int]]]:
    """표본 -> (실험 이름, {변형: {"up", "down"}}). 다른 레이블(복제본, otel_scope_* 등)은 더합니다."""
    experiments = sorted({labels.get("experiment") for labels, _ in feedback} |
                         {labels.get("experiment") for labels in requests} - {None})
    if experiment is None:
        if len(experiments) != 1:
            found = ", ".join(experiments) or "없음"
            raise InputError(f"--experiment 로 실험을 고르세요 (메트릭에 있는 실험: {found})")
        experiment = experiments[0]
    counts: dict[str, dict[str, float]] = {}
    for labels in requests:
        if labels.get("experiment") == experiment and labels.get("variant"):
            counts.setdefault(labels["variant"], {"up": 0.0, "down": 0.0})
    for labels, value in feedback:
        if labels.get("experiment") != experiment or not labels.get("variant"):
            continue
        rating = labels.get("rating")
        if rating not in ("up", "down"):
            continue
        counts.setdefault(labels["variant"], {"up": 0.0, "down": 0.0})[rating] += value
    if not counts:
        found = ", ".join(experiments) or "없음"
        raise InputError(f"실험 {experiment!r} 의 데이터가 없습니다 ({FEEDBACK_METRIC}; 메트릭에 있는 실험: {found})")
    if len(counts) != 2:
        raise InputError(f"실험 {experiment!r} 에 변형이 {len(counts)}개 있습니다 ({', '.join(sorted(counts))}): "
                         "이 보고서는 정확히 두 변형을 비교합니다")
    return experiment, {name: {k: round(v) for k, v in c.items()} for name, c in sorted(counts.items())}


# --------------------------------------------------------------------------- 출력
def report(experiment: str, result: Decision, alpha: float, min_samples: int) -> dict:
    return {"experiment": experiment, "variants": result.variants, "decision": result.decision,
            "winner": result.winner, "p_value": result.p_value, "alpha": alpha, "min_samples": min_samples,
            "reason": result.reason}


def _width(text: str) -> int:
    """터미널에서 차지하는 칸 수 (한글은 두 칸)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _row(cells: list[str], widths: tuple[int, ...]) -> str:
    first, *rest = cells
    out = first + " " * max(1, widths[0] - _width(first))
    return out + "".join(" " * max(1, w - _width(c)) + c for c, w in zip(rest, widths[1:], strict=True))


def render_text(data: dict) -> str:
    widths = (20, 8, 8, 9, 13)
    lines = [f"실험: {data['experiment']}  (alpha {data['alpha']:g}, 변형마다 최소 평가 {data['min_samples']}개)",
             _row(["변형", "좋아요", "싫어요", "평가 수", "좋아요 비율"], widths)]
    for name, s in data["variants"].items():
        rate = f"{s['up_rate']:.1%}" if s["up_rate"] is not None else "-"
        lines.append(_row([name, str(s["up"]), str(s["down"]), str(s["n"]), rate], widths))
    head = DECISION_TEXT.get(data["decision"], data["decision"])
    if data["winner"]:
        head += f" -> {data['winner']}"
    lines.append(f"판정: {head}")
    lines.append(data["reason"])
    return "\n".join(lines)


class KoreanArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: 옵션 오류: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = KoreanArgumentParser(prog="python -m ab_report",
                                  description="A/B 테스트의 피드백을 Fisher 정확 검정으로 비교합니다 (lesson §15).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--metrics-url", metavar="URL", help="복제본 하나의 /metrics 주소 (예: http://127.0.0.1:8000/metrics)")
    source.add_argument("--prometheus", metavar="URL", help="Prometheus 주소 (예: http://127.0.0.1:9090): 모든 복제본을 더함")
    parser.add_argument("--experiment", metavar="NAME", help="실험 이름 (AB_EXPERIMENT). 메트릭에 실험이 하나뿐이면 생략 가능")
    parser.add_argument("--alpha", type=float, default=0.05, help="유의 수준 (기본 0.05)")
    parser.add_argument("--min-samples", type=int, default=100, help="변형마다 필요한 최소 평가 수 (기본 100)")
    parser.add_argument("--json", action="store_true", help="결과를 JSON 으로")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.metrics_url or args.prometheus):
        parser.error("--metrics-url (복제본 하나의 /metrics) 또는 --prometheus (Prometheus 주소) 중 하나가 필요합니다")
    if not 0 < args.alpha < 1:
        parser.error(f"--alpha 는 0 과 1 사이여야 합니다 (받은 값 {args.alpha})")
    if args.min_samples < 1:
        parser.error(f"--min-samples 는 1 이상이어야 합니다 (받은 값 {args.min_samples})")
    try:
        if args.metrics_url:
            feedback, requests = read_metrics_url(args.metrics_url)
        else:
            feedback, requests = read_prometheus(args.prometheus)
        experiment, counts = collect(feedback, requests, args.experiment)
        result = decide(counts, alpha=args.alpha, min_samples=args.min_samples)
    except InputError as exc:
        print(f"ab_report: 오류: {exc}", file=sys.stderr)
        return 2
    except NotImplementedError as exc:
        print(f"ab_report: 아직 구현되지 않았습니다: {exc}", file=sys.stderr)
        return 2
    data = report(experiment, result, args.alpha, args.min_samples)
    print(json.dumps(data, ensure_ascii=False) if args.json else render_text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
