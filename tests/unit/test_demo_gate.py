"""The demo reports a candidate the champion gate keeps out instead of failing; anything else still fails."""

from types import SimpleNamespace

from dagster_project.materialize import only_the_gate_refused


def _result(*events: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(all_events=list(events))


def _failure(step: str) -> SimpleNamespace:
    return SimpleNamespace(event_type_value="STEP_FAILURE", step_key=step)


def _check(name: str, passed: bool) -> SimpleNamespace:
    asset = SimpleNamespace(to_user_string=lambda: "eval_report")
    data = SimpleNamespace(asset_key=asset, check_name=name, passed=passed)
    return SimpleNamespace(event_type_value="ASSET_CHECK_EVALUATION", asset_check_evaluation_data=data)


def test_only_a_refused_gate_counts_as_an_outcome() -> None:
    assert only_the_gate_refused(_result(_check("no_regression_vs_champion", False), _failure("eval_report")))
    assert not only_the_gate_refused(_result(_failure("preference_checkpoint")))  # training broke
    assert not only_the_gate_refused(_result(_failure("eval_report")))  # the eval itself raised
    assert not only_the_gate_refused(
        _result(_check("no_regression_vs_champion", False), _check("exact_masks", False), _failure("eval_report"))
    )
