"""The starter generator (coursekit.starters) and the committed starters being in sync."""

import textwrap

import pytest

from coursekit import starters

SOLUTION = textwrap.dedent(
    """\
    import os

    async def chat(req):
        # BEGIN SOLUTION
        response = await llm.ainvoke(req.message)
        # STARTER
        # # TODO(1): 비동기 호출로 바꾸세요.
        # response = llm.invoke(req.message)
        #
        # return response
        # END SOLUTION
        return response
    """
)


def test_render_keeps_starter_lines_and_drops_solution():
    out = starters.render(SOLUTION)
    assert "ainvoke" not in out
    assert "    # TODO(1): 비동기 호출로 바꾸세요.\n    response = llm.invoke(req.message)\n" in out
    assert "SOLUTION" not in out and "# STARTER" not in out
    assert out.startswith("import os\n")
    compile(out, "<starter>", "exec")


def test_file_without_markers_is_unchanged():
    assert starters.render("a = 1\n# comment\n") == "a = 1\n# comment\n"


@pytest.mark.parametrize(
    "bad, why",
    [
        ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", "STARTER"),
        ("# BEGIN SOLUTION\nx = 1\n# STARTER\n# x = 2\n# END SOLUTION\n", "TODO"),
        ("# BEGIN SOLUTION\nx = 1\n# STARTER\n# TODO: y\n", "닫히지"),
        ("x = 1\n# END SOLUTION\n", "짝이"),
        ("# BEGIN SOLUTION\n# STARTER\nx = 2  # TODO\n# END SOLUTION\n", "시작해야"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n", "다시"),
    ],
)
def test_malformed_markers_fail_loudly(bad, why):
    with pytest.raises(starters.MarkerError, match=why):
        starters.render(bad, source="f.py")


def test_generate_step_copies_plain_files_and_skips_caches(tmp_path):
    sol, step = tmp_path / "solutions" / "09-x", tmp_path / "steps" / "09-x"
    (sol / "__pycache__").mkdir(parents=True)
    (sol / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (sol / "main.py").write_text(SOLUTION, encoding="utf-8")
    (sol / "requirements.txt").write_text("fastapi\n", encoding="utf-8")
    (sol / ".env").write_text("SECRET=1\n", encoding="utf-8")
    starters.generate_step(sol, step)
    assert sorted(p.name for p in step.iterdir()) == ["main.py", "requirements.txt"]
    assert "ainvoke" not in (step / "main.py").read_text(encoding="utf-8")
    assert starters.check_all(tmp_path) == []
    (step / "main.py").write_text("changed\n", encoding="utf-8")
    (step / "extra.py").write_text("x\n", encoding="utf-8")
    problems = starters.check_all(tmp_path)
    assert any("main.py" in p for p in problems) and any("extra.py" in p for p in problems)


def test_committed_starters_equal_generated_ones():
    problems = starters.check_all()
    assert not problems, "스타터가 솔루션과 어긋납니다. `make starters` 를 실행하세요:\n" + "\n".join(problems)
