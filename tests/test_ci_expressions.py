"""The condition evaluators the step 03 grader uses to decide which jobs run for which event
(grader/ci_expressions.py, grader/ci_support.py), against the documented semantics of
GitHub Actions expressions and GitLab CI `rules:` / `only:`."""

from __future__ import annotations

import pytest

from grader import ci_support as ci
from grader.ci_expressions import ExpressionError, github_eval, github_if, github_template, gitlab_eval

PUSH = ci.github_contexts(ci.EVENTS[0])
PR = ci.github_contexts(ci.EVENTS[1])
PR_TARGET = ci.github_contexts(ci.EVENTS[2])


@pytest.mark.parametrize("expr, push, pr", [
    ("github.event_name == 'push' && github.ref == 'refs/heads/main'", True, False),
    ("${{ github.ref == 'refs/heads/main' }}", True, False),
    ("github.ref == 'REFS/HEADS/MAIN'", True, False),  # strings compare case-insensitively
    ("github.base_ref == 'main'", False, True),
    ("github.event.pull_request.base.ref == 'main'", False, True),
    ("startsWith(github.ref, 'refs/heads/')", True, False),
    ("contains(fromJSON('[\"push\", \"workflow_dispatch\"]'), github.event_name)", True, False),
    ("!(github.event_name == 'pull_request')", True, False),
    ("github.event_name != 'pull_request' && github.ref_name == 'main'", True, False),
])
def test_github_conditions(expr, push, pr):
    assert github_if(expr, PUSH) is push
    assert github_if(expr, PR) is pr


def test_github_status_functions():
    # No status function: success() && (...), so a failed dependency skips the job.
    assert not github_if("github.ref == 'refs/heads/main'", PUSH, success=False)
    assert github_if("always() && github.ref == 'refs/heads/main'", PUSH, success=False)
    assert github_if("failure()", PUSH, success=False, failure=True)
    assert not github_if("!cancelled()", PUSH, success=False, cancelled=True)
    assert github_if(None, PUSH) and not github_if(None, PUSH, success=False)


def test_github_operators_return_operands_and_coerce():
    assert github_eval("'' || 'fallback'", PUSH) == "fallback"
    assert github_eval("'a' && 'b'", PUSH) == "b"
    assert github_eval("1 == '1'", PUSH) is True
    assert github_eval("null == 0", PUSH) is True
    assert github_eval("github.nothing.here", PUSH) is None
    assert github_template("ci-${{ github.ref }}-${{ github.ref != 'refs/heads/main' }}", PUSH) == \
        "ci-refs/heads/main-false"


def test_github_unparsable_expression_is_an_expression_error():
    with pytest.raises(ExpressionError):
        github_eval("github.ref ==", PUSH)
    with pytest.raises(ExpressionError):
        github_eval("contains()", PUSH)


def test_pull_request_target_runs_on_the_base_branch_ref():
    """The trap the grader must see: pull_request_target has ref = refs/heads/main, so a deploy
    guarded only by the ref would deploy a stranger's pull request."""
    cond = "github.ref == 'refs/heads/main'"
    assert github_if(cond, PR_TARGET)
    assert not github_if("github.event_name == 'push' && " + cond, PR_TARGET)


def test_workflow_trigger_filters():
    wf = {"on": {"push": {"branches": ["main"]}, "pull_request": {"branches": ["main"]}}, "jobs": {}}
    names = {ev.label: ci.workflow_triggered(wf, ev) for ev in ci.EVENTS}
    assert names[ci.EVENTS[0].label] and names[ci.EVENTS[1].label]
    assert not names["다른 브랜치(feature/x)에 push"] and not names["태그 v1.0.0 push"]
    assert ci.workflow_triggered({"on": "push"}, ci.EVENTS[4])  # no filters: tags too
    assert not ci.workflow_triggered({"on": {"push": {"tags": ["v*"]}}}, ci.EVENTS[0])
    assert ci.workflow_triggered({"on": {"push": {"branches": ["**", "!feature/**"]}}}, ci.EVENTS[0])
    assert not ci.workflow_triggered({"on": {"push": {"branches": ["**", "!feature/**"]}}}, ci.EVENTS[3])


def test_a_skipped_needed_job_skips_its_dependants():
    wf = {"on": ["push", "pull_request"], "jobs": {
        "build": {"if": "github.event_name == 'push'"},
        "deploy": {"needs": "build"},
        "notify": {"needs": "build", "if": "always()"},
    }}
    assert ci.job_runs(wf, "deploy", ci.EVENTS[0])
    assert not ci.job_runs(wf, "deploy", ci.EVENTS[1])
    assert ci.job_runs(wf, "notify", ci.EVENTS[1])
    assert ci.needs_closure({"a": {}, "b": {"needs": "a"}, "c": {"needs": ["b"]}}, "c") == ["b", "a"]


@pytest.mark.parametrize("expr, push_main, mr", [
    ('$CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH', True, False),
    ("$CI_COMMIT_BRANCH", True, False),
    ("$CI_MERGE_REQUEST_IID", False, True),
    ("$CI_COMMIT_BRANCH =~ /^ma/", True, False),
    ("$CI_COMMIT_BRANCH !~ /^ma/", False, True),
    ("$CI_COMMIT_TAG == null", True, True),
    ('($CI_PIPELINE_SOURCE == "merge_request_event" || $CI_COMMIT_BRANCH == "main")', True, True),
])
def test_gitlab_rules_expressions(expr, push_main, mr):
    assert gitlab_eval(expr, ci.gitlab_variables(ci.EVENTS[0])) is push_main
    assert gitlab_eval(expr, ci.gitlab_variables(ci.EVENTS[1])) is mr


def test_gitlab_job_selection():
    cfg = {"workflow": {"rules": [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'},
                                  {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]}}
    deploy = {"rules": [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"', "when": "never"},
                        {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]}
    runs = {ev.label: ci.gitlab_job_runs(cfg, deploy, ev) for ev in ci.EVENTS if ev.gitlab_source}
    assert runs == {"main 브랜치에 push": True, "main 으로 가는 pull request": False,
                    "다른 브랜치(feature/x)에 push": False, "태그 v1.0.0 push": False}
    # No rules, no only: GitLab's default (branches and tags), never merge request pipelines.
    assert ci.gitlab_job_runs({}, {}, ci.EVENTS[3]) and not ci.gitlab_job_runs({}, {}, ci.EVENTS[1])
    assert ci.gitlab_job_runs({}, {"only": ["main"]}, ci.EVENTS[0])
    assert not ci.gitlab_job_runs({}, {"only": ["main"]}, ci.EVENTS[3])
    with pytest.raises(ExpressionError):
        gitlab_eval("$CI_COMMIT_BRANCH =~ /[/", {})


def test_gitlab_stage_order_gates_jobs_without_needs():
    jobs = {"test": {"stage": "test"}, "eval": {"stage": "eval"}, "deploy": {"stage": "deploy"},
            "fast": {"stage": "deploy", "needs": []}}
    stages = ["test", "eval", "deploy"]
    assert ci.gitlab_depends_on(jobs, stages, "deploy") == {"test", "eval"}
    assert ci.gitlab_depends_on(jobs, stages, "fast") == set()
