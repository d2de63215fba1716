"""docs/contract.md shows the contract without the solution's code; what it shows must still be true
of the solution: the OpenAPI shapes, the documented responses, the settings table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from coursekit import REPO_ROOT

DOC = REPO_ROOT / "docs" / "contract.md"
SOLUTION = REPO_ROOT / "solutions" / "02-fastapi"

pytestmark = pytest.mark.skipif(not SOLUTION.is_dir(), reason="solutions/ 가 없는 배포본")


@pytest.fixture(scope="module")
def openapi() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "SERVICE_", "LLM_", "MAX_"))}
    env.update({"GOOGLE_API_KEY": "sim-any-key", "SERVICE_API_KEY": "lab-service-key"})
    out = subprocess.run([sys.executable, "-c", "import json, main; print(json.dumps(main.app.openapi()))"],
                         cwd=SOLUTION, env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _tab_blocks(section: str) -> dict[str, dict]:
    """{tab title: parsed JSON} of the `=== "Title"` tabs with a json block in a section of the page."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end != -1 else None]
    found = {}
    for m in re.finditer(r'=== "([^"]+)"\n\n    ```json\n(.*?)\n    ```', body, re.S):
        found[m.group(1)] = json.loads(re.sub(r"(?m)^    ", "", m.group(2)))
    return found


def _resolve(schema: dict, spec: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def _matches(doc: dict, real: dict, spec: dict, where: str) -> list[str]:
    """Fields, types, required and additionalProperties of `doc` hold in `real` (names of $refs are free)."""
    real = _resolve(real, spec)
    bad = []
    for key in ("type", "minLength", "maxLength", "additionalProperties"):
        if key in doc and real.get(key) != doc[key]:
            bad.append(f"{where}.{key}: 문서 {doc[key]!r}, 실제 {real.get(key)!r}")
    if "required" in doc and sorted(real.get("required", [])) != sorted(doc["required"]):
        bad.append(f"{where}.required: 문서 {doc['required']}, 실제 {real.get('required')}")
    for name, sub in doc.get("properties", {}).items():
        if name not in real.get("properties", {}):
            bad.append(f"{where}.{name}: 실제 스키마에 없음")
        elif "$ref" not in sub:
            bad += _matches(sub, real["properties"][name], spec, f"{where}.{name}")
    return bad


def test_documented_schemas_are_the_solutions(openapi):
    blocks = _tab_blocks("OpenAPI 스키마")
    assert set(blocks) == {"ChatRequest", "ChatResponse", "Usage", "ErrorResponse"}
    schemas = openapi["components"]["schemas"]
    bad = []
    for name, doc in blocks.items():
        bad += _matches(doc, schemas[name], openapi, name)
    assert not bad, bad


def test_documented_responses_and_health(openapi):
    text = DOC.read_text(encoding="utf-8")
    codes = re.search(r"`responses` 에는 200 과 함께 ([\d, ]+) 가 문서화", text).group(1)
    documented = {"200"} | {c.strip() for c in codes.split(",")}
    assert documented == set(openapi["paths"]["/chat"]["post"]["responses"])
    health = json.loads(re.search(r"- `200` →\n\n```json\n(.*?)\n```", text, re.S).group(1))
    assert set(health) == set(_resolve(openapi["paths"]["/health"]["get"]["responses"]["200"]["content"]
                                       ["application/json"]["schema"], openapi)["properties"])


def test_settings_table_names_the_solutions_settings():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("| 환경 변수 |"):text.index("\n\n", text.index("| 환경 변수 |"))]
    names = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    source = (SOLUTION / "main.py").read_text(encoding="utf-8")
    fields = set(re.findall(r"^    ([a-z_]+): [^=\n]+", source[source.index("class Settings"):], re.M))
    assert {n.lower() for n in names} <= fields, sorted({n.lower() for n in names} - fields)
    assert "solutions/" not in text and "course:code" not in text, "the contract page must not pull solution code"
