"""Google-shaped error bodies ({"error": {"code", "message", "status", "details"}}).

Shapes follow what generativelanguage.googleapis.com returns (seen in public issue
reports): 400 INVALID_ARGUMENT + ErrorInfo API_KEY_INVALID for a bad key, 403
PERMISSION_DENIED for a missing key, 429 RESOURCE_EXHAUSTED with QuotaFailure, Help and
RetryInfo details, 500 INTERNAL, 503 UNAVAILABLE, 404 NOT_FOUND.
"""

from __future__ import annotations

import orjson

__all__ = ["error_body"]

_SERVICE = "generativelanguage.googleapis.com"


def _body(code: int, status: str, message: str, details: list | None = None) -> bytes:
    err: dict = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return orjson.dumps({"error": err})


def api_key_missing() -> tuple[int, bytes]:
    return 403, _body(403, "PERMISSION_DENIED",
                      "Method doesn't allow unregistered callers (callers without established identity). "
                      "Please use API Key or other form of API consumer identity to call this API.")


def api_key_invalid() -> tuple[int, bytes]:
    msg = "API key not valid. Please pass a valid API key."
    return 400, _body(400, "INVALID_ARGUMENT", msg, [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": _SERVICE}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": msg},
    ])


def resource_exhausted(model: str, retry_delay_s: int, quota_value: int | None = None,
                       quota: bool = False) -> tuple[int, bytes]:
    msg = ("You exceeded your current quota, please check your plan and billing details. For more "
           "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
    if not quota:
        msg = "Resource has been exhausted (e.g. check quota)."
    violation = {"quotaMetric": f"{_SERVICE}/generate_content_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                 "quotaDimensions": {"location": "global", "model": model}}
    if quota_value is not None:
        violation["quotaValue"] = str(quota_value)
    return 429, _body(429, "RESOURCE_EXHAUSTED", msg, [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {"@type": "type.googleapis.com/google.rpc.Help",
         "links": [{"description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{max(int(retry_delay_s), 1)}s"},
    ])


def internal() -> tuple[int, bytes]:
    return 500, _body(500, "INTERNAL", "An internal error has occurred. Please retry or report in "
                                       "https://developers.generativeai.google/guide/troubleshooting")


def unavailable() -> tuple[int, bytes]:
    return 503, _body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def invalid_argument(message: str) -> tuple[int, bytes]:
    return 400, _body(400, "INVALID_ARGUMENT", message)


def invalid_json(detail: str) -> tuple[int, bytes]:
    return 400, _body(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {detail}")


def not_found(message: str) -> tuple[int, bytes]:
    return 404, _body(404, "NOT_FOUND", message)


def method_not_allowed(method: str) -> tuple[int, bytes]:
    return 405, _body(405, "METHOD_NOT_ALLOWED", f"Method {method} is not allowed for this resource.")


def error_body(code: int, status: str, message: str) -> bytes:
    return _body(code, status, message)
