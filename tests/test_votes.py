import duckdb
import pytest

from partitions import AGENTS
from persona_assets.agents.transcripts import alias_table
from persona_assets.settings import SAMPLE_BOARD_DIR
from persona_assets.votes.prediction import UNKNOWN, parse_final_vote, vote_metrics
from persona_assets.votes.records import VoteRecordError, formal_question, read_votes, resolve_votes, split_names


@pytest.mark.parametrize(
    "reply, vote",
    [
        ("I strongly support the teachers and yes, I approve in spirit. Final Vote: Naye", "Naye"),
        ("Final Vote: Aye\nOn reflection, no.\nFinal Vote: Naye", "Naye"),
        ("Final Vote: Naye ... Final vote: AYE", "Aye"),
        ("**Final Vote:** Aye", "Aye"),  # markdown bold around the label is still explicit
        ("Final Vote: **Aye**", "Aye"),
        ("Yes, I support this motion wholeheartedly.", UNKNOWN),
        ("Final Vote: Abstain", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_the_last_explicit_final_vote_wins(reply, vote):
    assert parse_final_vote(reply) == vote


@pytest.mark.parametrize(
    "text, names",
    [
        ("Ms. Vega, Dr. Brandt and Mr. Quist", ["Ms. Vega", "Dr. Brandt", "Mr. Quist"]),
        ("Ms. Vega; Dr. Brandt", ["Ms. Vega", "Dr. Brandt"]),
        ("Dr. Brandt, Ms. Vega, and Mr. Quist", ["Dr. Brandt", "Ms. Vega", "Mr. Quist"]),
        ("Mr. Quist & Ms. Vega", ["Mr. Quist", "Ms. Vega"]),
        ("", []),
    ],
)
def test_names_split_on_commas_semicolons_and(text, names):
    assert split_names(text) == names


def test_sample_vote_records_resolve_every_name():
    votes = read_votes(SAMPLE_BOARD_DIR / "votes.csv")
    resolved, unknown = resolve_votes(votes.motions, alias_table(AGENTS))
    assert unknown == []
    assert {v.agent for v in resolved} == {a.key for a in AGENTS}
    assert {v.vote for v in resolved} == {"Aye", "Naye"}


def test_an_unknown_name_is_reported_not_dropped(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text("Context,Ayes,Nayes\nAdopt the plan,\"Ms. Vega and Mrs. Ortiz\",Dr. Brandt\n")
    resolved, unknown = resolve_votes(read_votes(path).motions, alias_table(AGENTS))
    assert [(v.agent, v.vote) for v in resolved] == [("marisolvega", "Aye"), ("annikabrandt", "Naye")]
    assert [name for _, name in unknown] == ["Mrs. Ortiz"]


@pytest.mark.parametrize(
    "text, row, field",
    [
        ("Context,Ayes\nAdopt,Ms. Vega\n", 1, "header"),
        ("Context,Ayes,Nayes\n,Ms. Vega,\n", 2, "Context"),
        ("Context,Ayes,Nayes\nAdopt the plan,Ms. Vega,\nRaise fees,\"Mr. Quist, 42\",\n", 3, "Ayes"),
        ("Context,Ayes,Nayes\nAdopt the plan,,\n", 2, "Ayes"),
    ],
)
def test_bad_vote_records_name_file_row_and_field(tmp_path, text, row, field):
    path = tmp_path / "votes.csv"
    path.write_text(text)
    with pytest.raises(VoteRecordError) as info:
        read_votes(path)
    message = str(info.value)
    assert str(path) in message and f"row {row}" in message and f"field '{field}'" in message


def test_formal_question():
    assert formal_question("Approve the revised bus routes.") == "Should the board approve the revised bus routes?"


def test_metrics_against_the_majority_baseline():
    truth = ["Aye"] * 7 + ["Naye"] * 3
    always_aye = vote_metrics(truth, ["Aye"] * 10)
    assert always_aye.accuracy == pytest.approx(0.7) and always_aye.majority_baseline == pytest.approx(0.7)
    assert always_aye.balanced_accuracy == pytest.approx(0.5)
    assert always_aye.macro_f1 == pytest.approx((2 * 0.7 / 1.7 + 0) / 2)
    with_unknowns = vote_metrics(truth, ["Aye"] * 5 + [UNKNOWN] * 2 + ["Naye"] * 3)
    assert with_unknowns.unknown_rate == pytest.approx(0.2) and with_unknowns.accuracy == pytest.approx(0.8)
    assert with_unknowns.balanced_accuracy == pytest.approx((5 / 7 + 1) / 2)


@pytest.mark.slow
def test_the_main_job_predicts_votes_for_every_agent(sample_run):
    with duckdb.connect(str(sample_run.home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("select method, count(*), count(distinct agent) from votes.vote_predictions group by method order by method").fetchall()
        assert rows == [("generate", 30, 3), ("score", 30, 3)]
        scopes = con.execute("select distinct scope from votes.vote_metrics_summary order by scope").fetchall()
        assert [s for (s,) in scopes] == sorted([a.key for a in AGENTS] + ["overall"])
