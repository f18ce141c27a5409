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
    from darkroom.evals.reporting.job_log import run_params
    from darkroom.evals.reporting.naming import settings_of
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


def _infos(**runs):
    from darkroom.platform.data.runinfo import RunInfo

    return {r: RunInfo.model_validate({"run_id": r, **info}) for r, info in runs.items()}


LORA_MODEL = {"model": "builtin:digits-ldm", "name": "digits-ldm",
              "loras": [{"name": "finetune", "path": "/adapters/finetune"},
                        {"name": "style", "path": "/adapters/style"}]}
LORA_RUN = {"model": LORA_MODEL, "model_label": "digits-ldm",
            "sampler": {"name": "dpmpp_2m"}, "steps": 10, "guidance_scale": 1.5}


def test_adapter_scales_and_sets_are_told_apart_by_the_setting_not_a_hash():
    """A LoRA-scale sweep (configs/jobs/lora_vs_base.yaml) and an adapter-set sweep: every name
    says the scale or the set; none ends in an id."""
    from darkroom.evals.reporting.naming import run_names

    scales = run_names(_infos(**{f"id{i:010d}": {**LORA_RUN, "lora_scale": s}
                                 for i, s in enumerate([0.0, 0.5, 1.0])}))
    assert sorted(scales.values()) == [f"digits-ldm-dpmpp_2m-s10-g1.5-scale{s}"
                                       for s in ("0.0", "0.5", "1.0")]
    sets = run_names(_infos(a={**LORA_RUN, "adapters": []},
                            b={**LORA_RUN, "adapters": ["style"]},
                            c={**LORA_RUN, "adapters": None},  # all of the model's
                            d={**LORA_RUN, "adapters": ["style"], "lora_scale": 0.5}))
    assert sets == {"a": "digits-ldm-dpmpp_2m-s10-g1.5-lora-none",
                    "b": "digits-ldm-dpmpp_2m-s10-g1.5-lora-style-scale1.0",
                    "c": "digits-ldm-dpmpp_2m-s10-g1.5-lora-finetune+style",
                    "d": "digits-ldm-dpmpp_2m-s10-g1.5-lora-style-scale0.5"}


def test_edit_settings_call_options_and_load_options_name_runs():
    from darkroom.evals.reporting.naming import run_names

    base = {"model": {"model": "tiny:sd_img2img"}, "sampler": {"name": "ddim"}, "steps": 4,
            "guidance_scale": 5.0}
    names = run_names(_infos(
        a={**base, "strength": 0.3}, b={**base, "strength": 0.8},
        c={**base, "strength": 0.8, "image_guidance_scale": 1.5},
        d={**base, "model": {"model": "tiny:sd_img2img", "dtype": "bf16"}, "strength": 0.3}))
    assert names["a"] == "tiny:sd_img2img-ddim-s4-g5.0-strength0.3-default-options"
    assert names["b"] == "tiny:sd_img2img-ddim-s4-g5.0-strength0.8-img-gNone"
    assert names["c"] == "tiny:sd_img2img-ddim-s4-g5.0-strength0.8-img-g1.5"
    assert names["d"] == "tiny:sd_img2img-ddim-s4-g5.0-strength0.3-dtype=bf16"
    micro = run_names(_infos(a={**base, "call_options": {"original_size": [64, 64]}},
                             b={**base, "call_options": {"original_size": [128, 128]}}))
    assert micro == {"a": "tiny:sd_img2img-ddim-s4-g5.0-original_size=[64, 64]",
                     "b": "tiny:sd_img2img-ddim-s4-g5.0-original_size=[128, 128]"}


def test_only_runs_whose_settings_are_all_the_same_get_the_id():
    from darkroom.evals.reporting.naming import distinct_names, run_names

    twins = run_names(_infos(aaaaaaaa11={**LORA_RUN}, bbbbbbbb22={**LORA_RUN}))
    assert twins == {"aaaaaaaa11": "digits-ldm-dpmpp_2m-s10-g1.5-aaaaaaaa",
                     "bbbbbbbb22": "digits-ldm-dpmpp_2m-s10-g1.5-bbbbbbbb"}
    # compare reads the same settings back from MLflow params (strings)
    from darkroom.evals.reporting.naming import settings_of

    params = {r: {k: str(v) for k, v in settings_of(i).items()} for r, i in _infos(
        x={**LORA_RUN, "lora_scale": 0.5}, y={**LORA_RUN, "lora_scale": 1.0}).items()}
    assert distinct_names(params) == {"x": "digits-ldm-dpmpp_2m-s10-g1.5-scale0.5",
                                      "y": "digits-ldm-dpmpp_2m-s10-g1.5-scale1.0"}
