"""Run names: distinct within a job at log time, and the same rule at compare time."""

from __future__ import annotations


def test_runs_that_differ_only_in_eta_or_overrides_get_distinct_names():
    from darkroom.evals.reporting.naming import run_names
    from darkroom.platform.data.runinfo import RunInfo

    def infos(**runs) -> dict[str, RunInfo]:
        return {r: RunInfo.model_validate({"run_id": r, "model": {"model": "tiny:sd"}, **info})
                for r, info in runs.items()}

    base = {"model_label": "tiny-sd", "sampler": {"name": "ddim", "overrides": {}},
            "steps": 3, "guidance_scale": 5.0, "eta": 0.0, "seed": 0}
    names = run_names(infos(
        a=base, b={**base, "eta": 0.5},
        c={**base, "sampler": {"name": "ddim", "overrides": {"timestep_spacing": "trailing"}}},
        d={**base, "eta": 0.5, "sampler": {"name": "ddim", "overrides": {
            "timestep_spacing": "trailing"}}}))
    assert len(set(names.values())) == 4
    assert names["b"] == "tiny-sd-ddim-s3-g5.0-eta0.5-default"
    assert names["d"] == "tiny-sd-ddim-s3-g5.0-eta0.5-timestep_spacing=trailing"
    assert run_names(infos(a=base)) == {"a": "tiny-sd-ddim-s3-g5.0"}  # nothing differs
    # a setting is added only where it tells apart runs that would share a name
    other = {**base, "model_label": "tiny-dit", "model": {"model": "tiny:dit"}, "eta": 0.5}
    assert run_names(infos(a={**base, "model": {"model": "tiny:sd"}}, e=other)) == {
        "a": "tiny-sd-ddim-s3-g5.0", "e": "tiny-dit-ddim-s3-g5.0"}


def test_compare_tells_runs_of_two_jobs_apart_by_the_same_rule():
    """compare names from the logged params as tracking named the runs from run.json."""
    from darkroom.evals.reporting.compare import RunRow, name_rows
    from darkroom.evals.reporting.naming import settings_of
    from darkroom.evals.reporting.tracking import run_params
    from darkroom.evals.results import RunResult
    from darkroom.platform.data.runinfo import RunInfo

    def row(mlflow_id: str, seed: int, overrides: dict) -> RunRow:
        info = RunInfo.model_validate({
            "run_id": "r", "model": {"model": "tiny:sd", "revision": "main"},
            "model_label": "tiny-sd", "sampler": {"name": "ddim", "overrides": overrides},
            "steps": 3, "guidance_scale": 5.0, "seed": seed})
        params = {k: str(v) for k, v in run_params(info, RunResult("r", None, info, {})).items()}
        assert {k: str(v) for k, v in settings_of(info).items()}.items() <= params.items()
        return RunRow(mlflow_id, "tiny-sd-ddim-s3-g5.0", params, {})

    rows = [row("aaaaaaaa1", 0, {}), row("bbbbbbbb2", 1, {}), row("cccccccc3", 1, {"x": 1})]
    name_rows(rows)
    assert [r.display for r in rows] == ["tiny-sd-ddim-s3-g5.0-default-seed0",
                                         "tiny-sd-ddim-s3-g5.0-default-seed1",
                                         "tiny-sd-ddim-s3-g5.0-x=1"]
