"""Evaluators for the two condition languages a step 03 pipeline uses, so the grader can ask
"would the deploy job run for this event?" instead of searching the text for words.

- GitHub Actions expressions (`if:` of jobs and steps, `${{ ... }}`), as documented in
  "Evaluate expressions in workflows and actions": literals, contexts with `.`/`[]`, `!`,
  comparisons (strings compared case-insensitively, other types coerced to numbers), `&&`/`||`
  returning an operand, and the functions contains/startsWith/endsWith/format/join/toJSON/
  fromJSON plus the status functions success/always/failure/cancelled.
- GitLab CI `rules: if:` expressions (CI/CD variable expressions): `$VAR`, quoted strings,
  `null`, `/regex/`, `==`, `!=`, `=~`, `!~`, `&&`, `||` and parentheses.

Both are small recursive-descent parsers; anything they cannot parse raises ExpressionError,
which the checks turn into a failed check naming the expression.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ExpressionError", "github_eval", "github_if", "github_template", "gitlab_eval"]


class ExpressionError(ValueError):
    """An expression the grader cannot parse."""


# --------------------------------------------------------------------------- GitHub Actions
_GH_TOKEN = re.compile(
    r"\s*(?:(?P<num>0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<str>'(?:[^']|'')*')"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,*])"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_-]*))"
)


def _gh_tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _GH_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"해석할 수 없는 식: {text!r} ({pos + 1}번째 글자)")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


@dataclass
class _Status:
    success: bool = True
    failure: bool = False
    cancelled: bool = False


class _GitHubParser:
    def __init__(self, text: str, contexts: dict[str, Any], status: _Status):
        self.text = text
        self.toks = _gh_tokens(text)
        self.i = 0
        self.ctx = contexts
        self.status = status

    def peek(self, value: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        return value is None or self.toks[self.i][1] == value

    def take(self, value: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks) or (value is not None and self.toks[self.i][1] != value):
            raise ExpressionError(f"해석할 수 없는 식: {self.text!r}")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Any:
        value = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"해석할 수 없는 식: {self.text!r}")
        return value

    def or_(self):
        left = self.and_()
        while self.peek("||"):
            self.take()
            right = self.and_()
            left = left if _gh_truthy(left) else right
        return left

    def and_(self):
        left = self.eq()
        while self.peek("&&"):
            self.take()
            right = self.eq()
            left = right if _gh_truthy(left) else left
        return left

    def eq(self):
        left = self.cmp()
        while self.peek("==") or self.peek("!="):
            op = self.take()[1]
            right = self.cmp()
            same = _gh_equal(left, right)
            left = same if op == "==" else not same
        return left

    def cmp(self):
        left = self.unary()
        while any(self.peek(o) for o in ("<", "<=", ">", ">=")):
            op = self.take()[1]
            right = self.unary()
            a, b = _gh_number(left), _gh_number(right)
            if isinstance(left, str) and isinstance(right, str):
                a, b = left.lower(), right.lower()
            left = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
        return left

    def unary(self):
        if self.peek("!"):
            self.take()
            return not _gh_truthy(self.unary())
        return self.postfix()

    def postfix(self):
        value = self.primary()
        while True:
            if self.peek("."):
                self.take()
                if self.peek("*"):
                    self.take()
                    value = list(value.values()) if isinstance(value, dict) else []
                    continue
                kind, name = self.take()
                if kind != "ident":
                    raise ExpressionError(f"해석할 수 없는 식: {self.text!r}")
                value = _gh_index(value, name)
            elif self.peek("["):
                self.take()
                key = self.or_()
                self.take("]")
                value = _gh_index(value, key)
            else:
                return value

    def primary(self):
        kind, tok = self.take()
        if kind == "num":
            return float(int(tok, 16)) if tok.lower().startswith("0x") else float(tok)
        if kind == "str":
            return tok[1:-1].replace("''", "'")
        if tok == "(":
            value = self.or_()
            self.take(")")
            return value
        if kind != "ident":
            raise ExpressionError(f"해석할 수 없는 식: {self.text!r}")
        low = tok.lower()
        if low in ("true", "false"):
            return low == "true"
        if low == "null":
            return None
        if self.peek("("):
            self.take()
            args = []
            while not self.peek(")"):
                args.append(self.or_())
                if self.peek(","):
                    self.take()
            self.take(")")
            return self.call(low, args)
        return self.ctx.get(tok, self.ctx.get(low))

    def call(self, name: str, args: list[Any]):
        st = self.status
        if name == "success":
            return st.success
        if name == "always":
            return True
        if name == "failure":
            return st.failure
        if name == "cancelled":
            return st.cancelled
        if name == "contains":
            hay, needle = args[0], args[1]
            if isinstance(hay, list):
                return any(_gh_equal(x, needle) for x in hay)
            return _gh_str(needle).lower() in _gh_str(hay).lower()
        if name == "startswith":
            return _gh_str(args[0]).lower().startswith(_gh_str(args[1]).lower())
        if name == "endswith":
            return _gh_str(args[0]).lower().endswith(_gh_str(args[1]).lower())
        if name == "format":
            text = _gh_str(args[0])
            for n, a in enumerate(args[1:]):
                text = text.replace("{" + str(n) + "}", _gh_str(a))
            return text
        if name == "join":
            sep = _gh_str(args[1]) if len(args) > 1 else ","
            return sep.join(_gh_str(x) for x in args[0]) if isinstance(args[0], list) else _gh_str(args[0])
        if name == "tojson":
            return json.dumps(args[0])
        if name == "fromjson":
            try:
                return json.loads(_gh_str(args[0]))
            except ValueError:
                return None
        if name == "hashfiles":
            return ""
        raise ExpressionError(f"모르는 함수: {name}()")


def _gh_index(value: Any, key: Any) -> Any:
    if isinstance(value, dict):
        if isinstance(key, str):
            for k, v in value.items():
                if str(k).lower() == key.lower():
                    return v
        return None
    if isinstance(value, list) and isinstance(key, float) and key.is_integer() and 0 <= key < len(value):
        return value[int(key)]
    return None


def _gh_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _gh_truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, float):
        return value != 0 and not math.isnan(value)
    if isinstance(value, str):
        return value != ""
    return True


def _gh_number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        if not value.strip():
            return 0.0
        try:
            return float(int(value, 16)) if value.strip().lower().startswith("0x") else float(value)
        except ValueError:
            return math.nan
    return math.nan


def _gh_equal(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b) and not isinstance(a, (dict, list)):
        return a == b
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return a is b
    x, y = _gh_number(a), _gh_number(b)
    return x == y


def github_eval(expr: str, contexts: dict[str, Any], *, success: bool = True, failure: bool = False,
                cancelled: bool = False) -> Any:
    """Evaluate one GitHub Actions expression (without `${{ }}`)."""
    try:
        return _GitHubParser(expr, contexts, _Status(success, failure, cancelled)).parse()
    except (IndexError, TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(f"계산할 수 없는 식: {expr!r} ({type(exc).__name__})") from None


_STATUS_FUNCS = re.compile(r"\b(success|always|failure|cancelled)\s*\(", re.IGNORECASE)
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


def github_if(condition: Any, contexts: dict[str, Any], *, success: bool = True, failure: bool = False,
              cancelled: bool = False) -> bool:
    """Whether a job's or step's `if:` lets it run. No `if:` means `success()`; an `if:` without a
    status function is `success() && (...)`, as GitHub evaluates it."""
    if condition is None:
        return success
    if isinstance(condition, bool):
        return condition and success
    text = str(condition).strip()
    m = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.DOTALL)
    if m:
        text = m.group(1)
    elif "${{" in text:  # a template string with text around: always a non-empty string
        return success and bool(github_template(text, contexts))
    value = github_eval(text, contexts, success=success, failure=failure, cancelled=cancelled)
    if not _STATUS_FUNCS.search(text):
        return success and _gh_truthy(value)
    return _gh_truthy(value)


def github_template(text: str, contexts: dict[str, Any]) -> str:
    """Replace every `${{ expr }}` in a string (a `run:` script, an `env:` value)."""
    return _TEMPLATE.sub(lambda m: _gh_str(github_eval(m.group(1), contexts)), text)


def uses_status_function(condition: Any, names: tuple[str, ...] = ("always", "failure", "cancelled")) -> bool:
    """True when an `if:` calls always()/failure()/cancelled() (it then runs even if needs failed)."""
    if condition is None or isinstance(condition, bool):
        return False
    return any(re.search(rf"\b{n}\s*\(", str(condition), re.IGNORECASE) for n in names)


# --------------------------------------------------------------------------- GitLab CI
_GL_TOKEN = re.compile(
    r"\s*(?:(?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<regex>/(?:[^/\\]|\\.)*/[a-z]*)"
    r"|(?P<op>==|!=|=~|!~|&&|\|\||[()])"
    r"|(?P<null>null\b))"
)


def _gl_tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _GL_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"해석할 수 없는 rules:if 식: {text!r} ({pos + 1}번째 글자)")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _GitLabParser:
    def __init__(self, text: str, variables: dict[str, str]):
        self.text = text
        self.toks = _gl_tokens(text)
        self.i = 0
        self.vars = variables

    def peek(self, value: str | None = None) -> bool:
        return self.i < len(self.toks) and (value is None or self.toks[self.i][1] == value)

    def take(self, value: str | None = None):
        if self.i >= len(self.toks) or (value is not None and self.toks[self.i][1] != value):
            raise ExpressionError(f"해석할 수 없는 rules:if 식: {self.text!r}")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> bool:
        value = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"해석할 수 없는 rules:if 식: {self.text!r}")
        return bool(value)

    def or_(self):
        left = self.and_()
        while self.peek("||"):
            self.take()
            right = self.and_()
            left = bool(left) or bool(right)
        return left

    def and_(self):
        left = self.cmp()
        while self.peek("&&"):
            self.take()
            right = self.cmp()
            left = bool(left) and bool(right)
        return left

    def cmp(self):
        if self.peek("("):
            self.take()
            value = self.or_()
            self.take(")")
            return value
        left = self.operand()
        if any(self.peek(o) for o in ("==", "!=", "=~", "!~")):
            op = self.take()[1]
            right = self.operand()
            if op in ("==", "!="):
                same = left == right
                return same if op == "==" else not same
            pattern = right
            if isinstance(pattern, str) and pattern.startswith("/"):
                body, _, flags = pattern[1:].rpartition("/")
                rx = re.compile(body, re.IGNORECASE if "i" in flags else 0)
            elif pattern is None:
                return op == "!~"
            else:
                rx = re.compile(re.escape(str(pattern)))
            hit = left is not None and rx.search(str(left)) is not None
            return hit if op == "=~" else not hit
        # A bare variable is true when it is defined and not empty.
        return left not in (None, "")

    def operand(self):
        kind, tok = self.take()
        if kind == "var":
            name = tok.lstrip("$").strip("{}")
            return self.vars.get(name)
        if kind == "str":
            return tok[1:-1]
        if kind == "regex":
            return tok
        if kind == "null":
            return None
        raise ExpressionError(f"해석할 수 없는 rules:if 식: {self.text!r}")


def gitlab_eval(expr: str, variables: dict[str, str]) -> bool:
    """Evaluate a GitLab `rules: if:` expression for the given predefined variables."""
    try:
        return _GitLabParser(str(expr), variables).parse()
    except re.error as exc:
        raise ExpressionError(f"rules:if 식의 정규식을 해석할 수 없음: {expr!r} ({exc})") from None
