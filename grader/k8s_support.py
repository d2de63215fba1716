"""Kubernetes manifests of step 03: rendered with `kubectl kustomize` (offline, as ArgoCD would
render them), validated strictly with kubernetes-validate for one stated Kubernetes version,
and the ArgoCD Application checked against the fields of its CRD (grader/data)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .ci_support import run_tool, tool_path

K8S_VERSION = "1.33.0"
ARGOCD_SCHEMA = Path(__file__).with_name("data") / "argocd_application.schema.json"
REQUIRED_TARGETS = ("deploy/base", "deploy/overlays/dev", "deploy/overlays/prod")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass
class Rendered:
    target: str                      # e.g. "deploy/overlays/prod"
    docs: list[dict] = field(default_factory=list)
    error: str | None = None         # kustomize's message when rendering failed

    @property
    def ok(self) -> bool:
        return self.error is None


def kustomize_targets(step_dir: Path) -> list[str]:
    """deploy/base and every overlay folder that has a kustomization file (required ones first)."""
    found = list(REQUIRED_TARGETS)
    overlays = step_dir / "deploy" / "overlays"
    if overlays.is_dir():
        for d in sorted(overlays.iterdir()):
            rel = f"deploy/overlays/{d.name}"
            if d.is_dir() and rel not in found and _has_kustomization(d):
                found.append(rel)
    return found


def _has_kustomization(d: Path) -> bool:
    return any((d / n).is_file() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"))


def render(step_dir: Path, target: str) -> Rendered:
    d = step_dir / target
    if not d.is_dir() or not _has_kustomization(d):
        return Rendered(target, error="kustomization.yaml 이 있는 폴더가 없습니다")
    proc = run_tool([tool_path("kubectl") or "kubectl", "kustomize", str(d)], timeout=60)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().replace(str(step_dir) + "/", "")
        return Rendered(target, error=msg[-600:])
    try:
        docs = [x for x in yaml.safe_load_all(proc.stdout) if isinstance(x, dict)]
    except yaml.YAMLError as exc:
        return Rendered(target, error=f"렌더링 결과를 읽을 수 없음: {exc}")
    return Rendered(target, docs)


def name_of(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    return f"{doc.get('kind', '?')} {meta.get('name', '?')}"


def strict_errors(doc: dict) -> list[str]:
    """kubernetes-validate in strict mode (unknown fields are errors) for K8S_VERSION."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(최상위)"
        return [f"{path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"Kubernetes {K8S_VERSION} 에 없는 리소스 종류/버전 ({doc.get('apiVersion')}, {doc.get('kind')})"]
    except kubernetes_validate.InvalidSchemaError as exc:
        return [f"스키마를 읽을 수 없음: {exc}"]
    return []


def workloads(docs: list[dict]) -> Iterator[dict]:
    for d in docs:
        if d.get("kind") in WORKLOAD_KINDS:
            yield d


def pod_spec(workload: dict) -> dict:
    spec = workload.get("spec") if isinstance(workload.get("spec"), dict) else {}
    template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
    return template.get("spec") if isinstance(template.get("spec"), dict) else {}


def containers(workload: dict, init: bool = False) -> list[dict]:
    spec = pod_spec(workload)
    def items(key):
        value = spec.get(key)
        return [c for c in value if isinstance(c, dict)] if isinstance(value, list) else []

    out = items("containers")
    if init:
        out += items("initContainers")
    return out


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_FACTORS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024, "Mi": 1024 ** 2,
            "Gi": 1024 ** 3, "Ti": 1024 ** 4}


def quantity(value: Any) -> float | None:
    m = _QUANTITY.match(str(value).strip())
    if not m or m.group(2) not in _FACTORS:
        return None
    try:
        return float(m.group(1)) * _FACTORS[m.group(2)]
    except ValueError:
        return None


def argocd_schema() -> dict:
    return json.loads(ARGOCD_SCHEMA.read_text(encoding="utf-8"))


def argocd_errors(doc: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(argocd_schema())
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path]):
        path = ".".join(str(p) for p in err.path) or "(최상위)"
        out.append(f"{path}: {err.message}")
    return out


def plain(node: Any) -> Any:
    """ruamel's commented containers as plain dicts/lists (for jsonschema and json)."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node
