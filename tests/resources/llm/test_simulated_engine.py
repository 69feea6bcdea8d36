"""The planted-signal engine: what it reads from a prompt, what it answers, and the graph run on its
worlds."""

import math

import duckdb
import polars as pl
import pytest

from persona_platform.persona_assets.elicitation.prompts import (
    CANDIDATES,
    CHAT_CANDIDATES,
    chat_messages,
    few_shot_prompt,
    zero_shot_prompt,
)
from persona_platform.persona_assets.instance import EMBEDDED_PROFILE
from persona_platform.resources.llm import ChatPrompt, ScoreRequest
from persona_platform.resources.llm.resource import LLMResource
from persona_platform.resources.llm.simulated import PlantedSignalEngine, WorldSpec, world_survey
from tests.conftest import persona


@pytest.fixture(scope="module")
def engine():
    return PlantedSignalEngine(model_id="simulated", spec=WorldSpec(seed=5, questions=12))


def margin(engine, prompt) -> float:
    ((lp_true, lp_false),) = engine.score([ScoreRequest(prompt, CANDIDATES)])
    assert math.exp(lp_true) + math.exp(lp_false) == pytest.approx(1.0)
    return lp_true - lp_false


def test_demonstrations_move_the_answer_toward_the_concept_they_agree_with(engine):
    world = engine.worlds[0]
    query, *others = world.claims
    zero_shot = margin(engine, zero_shot_prompt(query.question, query.option, world.country))
    gold = [(c.question, c.option, c.gold) for c in others]
    negated = [(q, o, 1 - y) for q, o, y in gold]
    sign = 1 if query.gold else -1
    with_gold = margin(engine, few_shot_prompt(world.country, gold, (query.question, query.option)))
    with_negation = margin(engine, few_shot_prompt(world.country, negated, (query.question, query.option)))
    assert sign * with_gold > sign * zero_shot > sign * with_negation


def test_the_anchor_lines_and_other_worlds_carry_no_evidence(engine):
    world = engine.worlds[0]
    query = world.claims[0]
    # few_shot_prompt opens with two anchor demonstrations the worlds do not hold
    anchors_only = margin(engine, few_shot_prompt(world.country, [], (query.question, query.option)))
    assert anchors_only == pytest.approx(
        margin(engine, zero_shot_prompt(query.question, query.option, world.country))
    )


def test_a_claim_outside_its_worlds_is_refused_by_name(engine):
    with pytest.raises(ValueError, match="hold no claim 'Is the sky green\\?'"):
        engine.score([ScoreRequest(zero_shot_prompt("Is the sky green?", "Yes", "Aldoria"), CANDIDATES)])


def test_chat_prompts_are_answered_zero_shot(engine):
    world = engine.worlds[0]
    claim = world.claims[3]
    ((lp_true, lp_false),) = engine.score(
        [
            ScoreRequest(
                ChatPrompt(chat_messages(claim.question, claim.option, world.country)), CHAT_CANDIDATES
            )
        ]
    )
    assert lp_true - lp_false == pytest.approx(
        margin(engine, zero_shot_prompt(claim.question, claim.option, world.country))
    )


def test_settings_are_read_from_the_model_name_and_bad_ones_named():
    assert WorldSpec.parse("seed=3, salience=0.5") == WorldSpec(seed=3, salience=0.5)
    with pytest.raises(ValueError, match="unknown field 'salt'"):
        WorldSpec.parse("salt=1")
    engine = LLMResource(
        backend="simulated", model="seed=2,questions=4", models_dir="unused", corpus_dir="unused"
    ).engine()
    assert engine.model_id.startswith("simulated:seed=2,") and len(engine.worlds[0].claims) == 8


def test_worlds_are_seeded():
    first, again, other = (
        PlantedSignalEngine(model_id="s", spec=WorldSpec(seed=s)).worlds[0] for s in (1, 1, 2)
    )
    assert first == again and first.concepts != other.concepts


def test_the_world_survey_makes_exactly_the_worlds_claims():
    spec = WorldSpec(seed=4, countries=2, questions=5)
    engine = PlantedSignalEngine(model_id="s", spec=spec)
    survey = world_survey(spec)
    assert len(survey) == 10
    for question, options, selections in survey:
        ((country, shares),) = selections.items()
        top = options[shares.index(max(shares))]
        world = next(w for w in engine.worlds if w.country == country)
        assert {c.option for c in world.claims if c.question == question and c.gold} == {top}


@pytest.mark.slow
def test_the_elicitation_graph_finds_the_planted_signal(tmp_path):
    settings = "seed=3,countries=2"
    survey = tmp_path / "world.csv"
    written = persona(tmp_path, "world", str(survey), "--settings", settings)
    assert written.returncode == 0, written.stderr
    selection = 'group:opinions or key:"primary/elicitation/*"'
    result = persona(
        tmp_path / "home",
        "run",
        "--config",
        str(EMBEDDED_PROFILE),
        "--select",
        selection,
        source=survey,
        extra_env={"PERSONA_ENGINE": "simulated", "PERSONA_MODEL": settings},
    )
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as con:
        labels = con.sql(
            "SELECT icm_label, label FROM primary__elicitation.icm_labels WHERE icm_label IS NOT NULL"
        ).pl()
        summary = con.sql(
            "SELECT method, mean FROM "
            "primary__elicitation.accuracy_summary WHERE scope = 'aggregate' AND headline "
            "AND variant = 'all'"
        ).pl()
    assert (labels["icm_label"] == labels["label"]).mean() >= 0.85
    means = dict(summary.iter_rows())
    assert means["icm"] >= 0.9 and means["gold"] >= 0.9 and "zero_shot_chat" not in means
    assert summary.filter(pl.col("method") == "zero_shot_base_chat_template").height == 1
