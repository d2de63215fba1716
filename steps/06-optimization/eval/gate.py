"""평가 게이트: 평가 세트를 서비스의 LLM 호출 경로 그대로 돌리고, 지표가 임계값에 못 미치면 실패합니다.

    python -m eval                      # 이 단계 폴더에서. 설정은 서비스와 같음 (환경 변수, .env)
    LLM_MODEL=gemini-3.5-flash-lite python -m eval     # 다른 모델로
    PROMPT_VERSION=v1 python -m eval                   # 다른 프롬프트 버전으로

종료 코드: 0 통과, 1 임계값 미달 (품질 저하: 배포하면 안 됨), 2 평가할 수 없음 (설정, 데이터, LLM 연결 문제).
결과: eval/results/report.json (질문별 결과와 지표), eval/results/summary.md (GitHub 잡 요약용).
평가하지 못한 실행(종료 코드 2)은 결과 파일을 건드리지 않습니다: 이전 결과가 그대로 남습니다.

서비스를 따로 띄우지 않고, 서비스의 FastAPI 앱(main.app)을 이 프로세스 안에서 HTTP 로 부릅니다
(httpx 의 ASGITransport). 그래서 프롬프트, 모델, 클라이언트 설정, 응답 처리가 배포될 서비스와 똑같습니다.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import sys
import time
import tomllib
import unicodedata
from pathlib import Path

from .metrics import METRICS, Item, check, grade, is_relevant, summarize

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"


class EvalError(Exception):
    """평가를 할 수 없음 (한국어 메시지, 종료 코드 2)."""


# --------------------------------------------------------------------------- data
def load_toml(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise EvalError(f"{what} 파일이 없습니다: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EvalError(f"{what} 파일을 TOML 로 읽을 수 없습니다 ({path}): {exc}") from None


def _strings(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise EvalError(f"{where}: 비어 있지 않은 문자열의 목록이어야 합니다")
    return tuple(value)


def load_dataset(path: Path) -> tuple[list[Item], tuple[str, ...]]:
    """평가 세트와 거절 문구. 형식이 틀리면 어느 항목이 왜 틀렸는지 말합니다."""
    data = load_toml(path, "평가 세트")
    markers = _strings(data.get("refusal_markers"), f"{path.name} 의 refusal_markers")
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise EvalError(f"{path} 에 [[items]] 가 하나도 없습니다")
    items, seen = [], set()
    for n, raw in enumerate(raw_items, start=1):
        where = f"{path.name} 의 {n}번째 [[items]]"
        unknown = set(raw) - {"id", "question", "facts", "keywords", "refuse"}
        if unknown:
            raise EvalError(f"{where}: 모르는 키 {', '.join(sorted(unknown))}")
        if not isinstance(raw.get("id"), str) or not raw["id"] or raw["id"] in seen:
            raise EvalError(f"{where}: id 가 없거나 겹칩니다 ({raw.get('id')!r})")
        seen.add(raw["id"])
        if not isinstance(raw.get("question"), str) or not raw["question"].strip():
            raise EvalError(f"{where} ({raw['id']}): question 이 없습니다")
        refuse = raw.get("refuse", False)
        if not isinstance(refuse, bool):
            raise EvalError(f"{where} ({raw['id']}): refuse 는 true 또는 false 입니다")
        if refuse:
            if raw.get("facts") or raw.get("keywords"):
                raise EvalError(f"{where} ({raw['id']}): 거절해야 할 질문(refuse = true)에는 facts, keywords 를 쓰지 않습니다")
            items.append(Item(raw["id"], raw["question"], refuse=True))
        else:
            facts = _strings(raw.get("facts"), f"{where} ({raw['id']}) 의 facts")
            keywords = _strings(raw.get("keywords"), f"{where} ({raw['id']}) 의 keywords")
            items.append(Item(raw["id"], raw["question"], facts, keywords))
    return items, markers


def load_thresholds(path: Path) -> dict[str, float]:
    """임계값: [thresholds] 의 min_<지표> / max_<지표>. 모르는 이름은 오류 (철자가 틀린 임계값이 조용히 무시되지 않게)."""
    table = load_toml(path, "임계값").get("thresholds")
    if not isinstance(table, dict) or not table:
        raise EvalError(f"{path} 의 [thresholds] 에 임계값이 하나도 없습니다: 임계값 없는 게이트는 늘 통과합니다")
    out = {}
    for key, value in table.items():
        kind, _, name = key.partition("_")
        if kind not in ("min", "max") or name not in METRICS:
            raise EvalError(f"{path.name}: 모르는 임계값 {key!r} (min_ 또는 max_ + {', '.join(METRICS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalError(f"{path.name}: {key} 는 숫자여야 합니다 ({value!r})")
        out[key] = float(value)
    return out


def load_prices(path: Path) -> dict[str, tuple[float, float]]:
    models = load_toml(path, "가격표").get("models", {})
    try:
        return {m: (float(p["input_usd_per_1m"]), float(p["output_usd_per_1m"])) for m, p in models.items()}
    except (KeyError, TypeError, ValueError):
        raise EvalError(f"{path}: 모델마다 input_usd_per_1m, output_usd_per_1m 이 있어야 합니다") from None


# --------------------------------------------------------------------------- run
def import_service():
    """서비스 모듈(main.py)을 불러옵니다. 설정이 틀리면 서비스가 시작하지 못하는 것과 같은 이유로 실패합니다."""
    # 평가는 서비스를 이 프로세스 안에서 부르므로 서비스 API 키는 아무 값이나 됩니다.
    os.environ.setdefault("SERVICE_API_KEY", secrets.token_urlsafe(16))
    # 게이트는 답을 직접 채점하므로 운영용 표본 판정(LLM-as-a-judge, 04단계)은 끕니다: 판정 모델 호출이
    # 평가 비용과 보고서의 모델 목록에 섞이지 않게 합니다 (명시적으로 켠 값은 존중).
    os.environ.setdefault("JUDGE_SAMPLE_RATE", "0")
    if str(HERE.parent) not in sys.path:
        sys.path.insert(0, str(HERE.parent))
    try:
        import main
    except Exception as exc:  # pydantic ValidationError, 없는 프롬프트 파일 ...
        errors = getattr(exc, "errors", None)
        if callable(errors):  # 설정 오류: 값(비밀일 수 있음)은 빼고 어느 설정이 왜 틀렸는지만
            what = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                             for e in errors(include_url=False, include_input=False))
            raise EvalError(f"서비스 설정이 올바르지 않습니다 ({what}). 환경 변수나 .env 를 확인하세요.") from None
        raise EvalError(f"서비스(main.py)를 불러오지 못했습니다: {type(exc).__name__}: {exc}") from None
    return main


async def run_items(service, items: list[Item], concurrency: int) -> list[dict]:
    """질문마다 서비스의 POST /chat 을 부르고 (답, 모델, 프롬프트 버전, 토큰, 지연 시간) 을 모읍니다.
    하나라도 실패하면 나머지를 취소하고 EvalError: 일부만 잰 지표로 통과/실패를 정하지 않습니다."""
    import httpx

    app = service.app
    key = service.settings.service_api_key.get_secret_value()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    sem = asyncio.Semaphore(concurrency)

    async def one(client, item: Item) -> dict:
        async with sem:
            started = time.perf_counter()
            try:
                r = await client.post("/chat", json={"message": item.question}, headers={"X-API-Key": key})
            except httpx.HTTPError as exc:
                raise EvalError(f"질문 {item.id}: 서비스 호출 실패 ({type(exc).__name__})") from None
            latency = time.perf_counter() - started
        if r.status_code != 200:
            try:
                err = r.json()["error"]
                what = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                what = r.text[:200]
            base_url = service.settings.google_gemini_base_url or "Google 기본 주소"
            raise EvalError(f"질문 {item.id} ({item.question!r}) 에 서비스가 HTTP {r.status_code} ({what}) 로 답했습니다. "
                            f"LLM({base_url}) 에 연결할 수 있는지, GOOGLE_API_KEY 가 맞는지 확인하세요.")
        body = r.json()
        return {"item": item, "answer": body["response"], "model": body["model"],
                "prompt_version": body.get("prompt_version"), "usage": body["usage"], "latency_s": latency}

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=120) as client:
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(one(client, item)) for item in items]
            except* EvalError as group:
                raise group.exceptions[0] from None
    return [t.result() for t in tasks]


def score(raw: list[dict], markers, prices) -> list[dict]:
    """서비스의 답을 채점해 보고서의 질문별 결과로 만듭니다."""
    results = []
    for r in raw:
        item, answer, usage = r["item"], r["answer"], r["usage"]
        if r["model"] not in prices:
            raise EvalError(f"가격표(eval/prices.toml)에 모델 {r['model']!r} 이 없습니다: 비용을 잴 수 없습니다")
        price_in, price_out = prices[r["model"]]
        outcome = grade(item, answer, markers)
        results.append({
            "id": item.id, "question": item.question, "refuse": item.refuse, "facts": list(item.facts),
            "outcome": outcome, "relevant": is_relevant(item, answer, outcome),
            "answer": answer, "model": r["model"], "prompt_version": r["prompt_version"],
            "latency_s": round(r["latency_s"], 4),
            "input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"],
            "cost_usd": (usage["input_tokens"] * price_in + usage["output_tokens"] * price_out) / 1e6,
        })
    return results


# --------------------------------------------------------------------------- reports
def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, n: int) -> str:
    return text + " " * max(0, n - width(text))


def fmt(name: str, value: float) -> str:
    if name.endswith("_usd"):
        return f"${value:.6f}"
    if name.endswith("_s"):
        return f"{value:.3f}s"
    return f"{value:.2%}" if 0 <= value <= 1 else f"{value:g}"


def metric_rows(metrics: dict, thresholds: dict, failures: list[dict]) -> list[tuple[str, str, str, str]]:
    failed = {f["threshold"] for f in failures}
    rows = []
    for name, label in METRICS.items():
        limits = [(k, v) for k, v in thresholds.items() if k.partition("_")[2] == name]
        limit = ", ".join(f"{'≥' if k.startswith('min') else '≤'} {fmt(name, v)}" for k, v in limits) or "-"
        verdict = "-" if not limits else ("미달" if any(k in failed for k, _ in limits) else "통과")
        rows.append((label.split(" (")[0], fmt(name, metrics[name]), limit, verdict))
    return rows


LABEL = {"correct": "정답", "refused": "거절", "hallucinated": "환각", "generic": "거절 안 함"}


def print_table(report: dict) -> None:
    m = report["metrics"]
    print(f"평가 게이트: 모델 {report['model']}, 프롬프트 {report['prompt_version']}, "
          f"질문 {m['items']}개 (지식 베이스 {m['kb_items']}, 거절해야 할 질문 {m['refuse_items']})")
    rows = [("지표", "값", "임계값", "결과")] + metric_rows(m, report["thresholds"], report["failures"])
    widths = [max(width(r[i]) for r in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print("  " + "  ".join(pad(c, widths[i]) for i, c in enumerate(row)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    wrong = [r for r in report["results"] if r["outcome"] not in ("correct",) and not (r["refuse"] and r["outcome"] == "refused")]
    if wrong:
        print(f"\n틀린 질문 {len(wrong)}개:")
        for r in wrong:
            print(f"  - {r['id']} [{LABEL[r['outcome']]}] {r['question']} -> {r['answer'][:60]}")
    print()
    if report["passed"]:
        print("결과: 통과 (모든 지표가 임계값을 넘었습니다)")
    else:
        print("결과: 실패 — 임계값 미달:")
        for f in report["failures"]:
            print(f"  - {f['message']}")


def markdown(report: dict) -> str:
    m = report["metrics"]
    verdict = "✅ 통과" if report["passed"] else "❌ 실패 (임계값 미달)"
    lines = [f"## 평가 게이트: {verdict}", "",
             f"모델 `{report['model']}`, 프롬프트 `{report['prompt_version']}`, 질문 {m['items']}개 "
             f"(지식 베이스 {m['kb_items']}, 거절해야 할 질문 {m['refuse_items']})", "",
             "| 지표 | 값 | 임계값 | 결과 |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in metric_rows(m, report["thresholds"], report["failures"])]
    lines += ["", "| 질문 | 기대 | 결과 | 관련 | 지연(s) | 비용(USD) |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        q = r["question"].replace("|", "\\|")
        lines.append(f"| {r['id']}: {q} | {'거절' if r['refuse'] else '답'} | {LABEL[r['outcome']]} | "
                     f"{'예' if r['relevant'] else '아니오'} | {r['latency_s']:.3f} | {r['cost_usd']:.6f} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict) -> tuple[Path, Path]:
    """report.json 과 summary.md 를 임시 파일에 쓴 뒤 이름을 바꿉니다 (중간에 끊겨도 반쯤 쓴 파일이 남지 않음)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "report.json", out / "summary.md")
    texts = (json.dumps(report, ensure_ascii=False, indent=2), markdown(report))
    for path, text in zip(paths, texts):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m eval", description="평가 게이트: 평가 세트로 답변 품질을 재고 임계값과 비교합니다.")
    p.add_argument("--dataset", type=Path, default=HERE / "dataset.toml", help="평가 세트 (기본: eval/dataset.toml)")
    p.add_argument("--thresholds", type=Path, default=HERE / "thresholds.toml", help="임계값 (기본: eval/thresholds.toml)")
    p.add_argument("--prices", type=Path, default=HERE / "prices.toml", help="모델별 단가 (기본: eval/prices.toml)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="결과 폴더 (기본: eval/results)")
    p.add_argument("--concurrency", type=int, default=8, help="동시에 보내는 질문 수 (기본 8)")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    items, markers = load_dataset(args.dataset)
    thresholds = load_thresholds(args.thresholds)
    prices = load_prices(args.prices)
    service = import_service()
    raw = asyncio.run(run_items(service, items, max(1, args.concurrency)))
    results = score(raw, markers, prices)
    metrics = summarize(results)
    failures = check(metrics, thresholds)
    models = sorted({r["model"] for r in results})
    versions = sorted({str(r["prompt_version"]) for r in results})
    return {
        "passed": not failures,
        "model": ", ".join(models),
        "prompt_version": ", ".join(versions),
        "dataset": str(args.dataset),
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": metrics,
        "thresholds": thresholds,
        "failures": failures,
        "results": results,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = evaluate(args)
    except EvalError as exc:
        print(f"평가 게이트: 평가할 수 없습니다 — {exc}", file=sys.stderr)
        print(f"결과 파일은 쓰지 않았습니다 (이전 결과 {args.out} 는 그대로).", file=sys.stderr)
        return EXIT_ERROR
    except NotImplementedError as exc:
        print(f"평가 게이트: 아직 구현하지 않은 부분이 있습니다 — {exc}", file=sys.stderr)
        return EXIT_ERROR
    report["exit_code"] = EXIT_PASS if report["passed"] else EXIT_FAIL
    print_table(report)
    json_path, md_path = write_reports(args.out, report)
    print(f"\n보고서: {json_path}, {md_path}")
    return report["exit_code"]
