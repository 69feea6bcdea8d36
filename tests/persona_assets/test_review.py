import os
import subprocess

import duckdb
import polars as pl
import pytest

from persona_platform.persona_assets.lineage import lineage_graph
from persona_platform.persona_assets.review import DROP, EDIT, KEEP, Question, reviewed, run_review
from tests.conftest import PERSONA, persona

QUESTIONS = [
    Question(f"votes.motions:m{i}", f"Should the board do thing {i}?", (f"file:abc:{i + 2}",))
    for i in range(4)
]


def session(answers, reviews=None):
    saved, shown = [], []
    replies = iter(answers)

    def ask(prompt):
        shown.append(prompt)
        try:
            return next(replies)
        except StopIteration:
            raise EOFError from None

    made = run_review(QUESTIONS, reviews, saved.append, ask=ask, say=shown.append)
    return made, (saved[-1] if saved else reviews), shown


def test_keep_edit_drop_skip_and_quit():
    made, reviews, shown = session(["k", "e", "Should the board do the better thing?", "d", "s"])
    assert made == 3
    answers = zip(reviews["decision"], reviews["text"], strict=True)
    decisions = dict(zip(reviews["question_ref"], answers, strict=True))
    assert decisions == {
        "votes.motions:m0": (KEEP, "Should the board do thing 0?"),
        "votes.motions:m1": (EDIT, "Should the board do the better thing?"),
        "votes.motions:m2": (DROP, "Should the board do thing 2?"),
    }
    assert any("[1/4]" in line for line in shown) and any("[4/4]" in line for line in shown)
    assert reviews.filter(pl.col("question_ref") == "votes.motions:m1")["input_ids"].to_list() == [
        ["file:abc:3"]
    ]


def test_a_session_resumes_where_the_last_one_stopped():
    _, first, _ = session(["k", "q"])
    made, reviews, shown = session(["d", "q"], reviews=first)
    assert made == 1 and reviews.height == 2
    assert any("[2/4] Should the board do thing 1?" in line for line in shown)
    assert reviews.filter(pl.col("decision") == KEEP)["run_id"].to_list() == first["run_id"].to_list()


def test_reviewed_text_replaces_the_generated_one():
    _, reviews, _ = session(["e", "Edited?", "d", "q"])
    assert reviewed("votes.motions:m0", "gen", reviews, "votes.question_reviews")[:2] == ("Edited?", EDIT)
    assert reviewed("votes.motions:m1", "gen", reviews, "votes.question_reviews")[0] is None
    assert reviewed("votes.motions:m3", "gen", reviews, "votes.question_reviews") == ("gen", None, None)


@pytest.mark.slow
def test_review_command_in_a_terminal_session_and_lineage(tmp_path):
    assert persona(tmp_path, "run", "--select", 'key:"votes/motions"').returncode == 0
    typed = "e\nShould the board adopt the budget?\nd\nq\n"
    result = subprocess.run(
        [PERSONA, "review-questions"],
        input=typed,
        text=True,
        capture_output=True,
        env={**os.environ, "PERSONA_HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "[1/10]" in result.stdout and "2 reviewed in this session" in result.stdout
    assert persona(tmp_path, "run", "--select", 'key:"votes/motions"').returncode == 0
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as con:
        motions = con.execute(
            "select row_id, question, review from votes.motions order by source_row"
        ).fetchall()
        assert len(motions) == 9
        assert motions[0][1:] == ("Should the board adopt the budget?", "edit")
        nodes = lineage_graph(con, "votes.motions", motions[0][0])
    assert any(ref.startswith("votes.question_reviews:") for ref in nodes)
