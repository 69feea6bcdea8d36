"""The benchmarks' own logic (their timings are measured by `persona bench`, never asserted here)."""

from persona_platform.benchmarks import scoring
from persona_platform.benchmarks.model_loads import SUMMARY, upstream_loads
from persona_platform.benchmarks.planning import synthetic_survey
from persona_platform.resources.inputs.survey import read_survey


def test_upstream_loads_count_each_model_step_per_partition_and_setting():
    from persona_platform.partitions import AGENTS, COUNTRIES
    from persona_platform.persona_assets.definitions import defs

    loads = upstream_loads(defs, settings=4, agents=len(AGENTS))
    assert loads["primary__lora_training"] == len(AGENTS)  # one step for the adapters and the loss curve
    assert loads["primary__icm_search"] == len(COUNTRIES)
    assert (
        loads["primary__responses__task_responses"] == loads["primary__judging__judgments"] == 4 * len(AGENTS)
    )
    assert loads["primary__agents__perplexity_matrix"] == len(AGENTS) + 1
    assert loads["primary__alignment__agent_opinions"] == len(AGENTS) * len(COUNTRIES)
    assert "opinions__goqa_claims" not in loads  # no model, no load


def test_the_run_summary_is_parsed():
    line = "18 of 18 runs succeeded in 197.0 s; model loads 1, forward passes 25616, tokens computed 5781465"
    match = SUMMARY.search(line)
    assert (match["runs"], match["loads"]) == ("18", "1")


def test_a_survey_of_ten_thousand_countries_is_read(tmp_path):
    synthetic_survey(tmp_path / "s.csv", 10_000)
    assert (
        len(read_survey(tmp_path / "s.csv").countries) == 10_000
    )  # one cell larger than csv's default limit


def test_every_way_of_scoring_gives_the_same_margins(tiny_engine, monkeypatch):
    monkeypatch.setattr(scoring, "TESTS", 24)
    report = scoring.run(tiny_engine)
    assert report["test_prompts"] == 24 and report["max_margin_difference"] < 1e-4
