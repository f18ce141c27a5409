"""DINOv2 features (FD-DINOv2) and PickScore with small random-init models built here; the prompt
categories of per-category FID; contact sheets; run names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from darkroom.evals.extractors import WeightsMissing, check_extractor, load_extractor
from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import fd_dinov2
from darkroom.evals.metrics.distances import Stats
from darkroom.evals.spec import EvalSpec


def _images(count: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_dinov2_features_follow_the_dgm_eval_protocol(tiny_dinov2_dir):
    """Our features against the protocol done by hand: torchvision's PIL bicubic resize to
    224x224, ToTensor, ImageNet normalisation, then the CLS token of the final layer norm."""
    import torchvision.transforms as T
    from transformers import Dinov2Model

    extractor = load_extractor("dinov2", str(tiny_dinov2_dir))
    images = _images(3, size=48) + _images(1, size=20, seed=1)
    features = np.concatenate([extractor(images[:3]), extractor(images[3:])])
    assert features.shape == (4, 32) and extractor.num_features == 32
    prepare = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(),
                         T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    with torch.no_grad():
        batch = torch.stack([prepare(Image.fromarray(i)) for i in images])
        hidden = model.encoder(model.embeddings(batch)).last_hidden_state
        expected = model.layernorm(hidden)[:, 0].numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    assert "224" in extractor.protocol["resize"] and extractor.protocol["weights_sha256"]


def test_fd_dinov2_of_identical_sets_is_zero_and_grows_with_a_difference(tiny_dinov2_dir):
    extractor = load_extractor("dinov2", str(tiny_dinov2_dir))
    real = extractor(_images(60, seed=2))
    spec = EvalSpec(dinov2_model=str(tiny_dinov2_dir))
    ctx = Context(spec, references={"dinov2": Stats.of(real)})
    same = fd_dinov2(RunScores("r", {"row_id": np.arange(60), "features.dinov2": real}), ctx)
    assert abs(same["fd_dinov2"].value) < 1e-6
    dark = [(i * 0.3).astype(np.uint8) for i in _images(60, seed=3)]
    other = fd_dinov2(RunScores("r", {"row_id": np.arange(60),
                                      "features.dinov2": extractor(dark)}), ctx)
    assert other["fd_dinov2"].value > 0.01


def test_dinov2_without_weights_says_which_folder_to_provide(tmp_path, monkeypatch):
    reason = check_extractor("dinov2", str(tmp_path / "dinov2-large"))
    assert str(tmp_path / "dinov2-large") in reason and "eval.dinov2_model" in reason
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    reason = check_extractor("dinov2", None)
    assert "facebook/dinov2-large" in reason and "not on this machine" in reason
    assert "hf download facebook/dinov2-large --local-dir" in reason
    with pytest.raises(WeightsMissing, match="eval.dinov2_model"):
        load_extractor("dinov2", str(tmp_path))


# -- PickScore ----------------------------------------------------------------------------------


def test_pickscore_is_the_logit_scale_times_the_cosine(tiny_clip_dir):
    """Kirstain et al. 2023: exp(t) <E_img / |E_img|, E_txt / |E_txt|>, with the embeddings
    computed here from the towers and projections."""
    from transformers import CLIPModel, CLIPProcessor

    from darkroom.evals.preference import load_scorer

    images = _images(4, size=48, seed=4)
    prompts = ["a red fox", "soup", "an old map", "two cats"]
    scores = load_scorer("pickscore", str(tiny_clip_dir)).score(images, prompts)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt").pixel_values
        text = processor(text=prompts, padding=True, return_tensors="pt")
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        txt = model.text_projection(model.text_model(
            input_ids=text.input_ids, attention_mask=text.attention_mask).pooler_output)
        cosine = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        expected = (model.logit_scale.exp() * cosine).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_pickscore_without_weights_names_the_fix(tmp_path, monkeypatch):
    from darkroom.evals.preference import load_scorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match="eval.pickscore_model"):
        load_scorer("pickscore", "yuvalkirstain/PickScore_v1")
    with pytest.raises(WeightsMissing, match="has no config.json"):
        load_scorer("pickscore", str(tmp_path))


# -- categories, contact sheets, names ----------------------------------------------------------


def test_categories_use_the_jobs_prompt_ids(tmp_path):
    """The category of each prompt id, read back from the prompt file as the jobs read it."""
    from darkroom.evals.categories import prompt_categories
    from darkroom.jobs.prompts import load_prompts
    from darkroom.jobs.spec import PromptSource

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"key": "k9", "prompt": "a cat", "category": "animals"},
        {"key": "k3", "prompt": "a car", "category": "vehicles"}]) + "\n\n")
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,category\na cat,animals\na tree,\na car,vehicles\n")
    for file, columns in ((jsonl, {"id": "key"}), (csv, {})):
        prompts = load_prompts(PromptSource.model_validate({"file": str(file),
                                                            "columns": columns}))
        found, reason = prompt_categories({"prompts": {"file": str(file), "columns": columns}})
        assert reason == ""
        texts = {p.prompt_id: p.prompt for p in prompts}
        assert {texts[i]: c for i, c in found.items()} == {"a cat": "animals",
                                                           "a car": "vehicles"}
    (tmp_path / "plain.jsonl").write_text('{"prompt": "a cat"}\n')
    assert "plain.jsonl has no `category` column" in prompt_categories(
        {"prompts": {"file": str(tmp_path / "plain.jsonl")}})[1]
    assert "x.txt has no columns" in prompt_categories(
        {"prompts": {"file": str(tmp_path / "x.txt")}})[1]
    assert "do not come from a file" in prompt_categories({"prompts": {"classes": [1]}})[1]


def test_contact_sheet_spreads_over_prompts():
    from darkroom.evals.reporting.contact_sheets import spread

    prompt_ids = [f"p{i // 3:02d}" for i in range(60)]  # 20 prompts, 3 images each
    samples = [i % 3 for i in range(60)]
    picked = spread(prompt_ids, samples, 8)
    assert len({prompt_ids[i] for i in picked}) == 8 and all(samples[i] == 0 for i in picked)
    assert prompt_ids[picked[0]] == "p00" and prompt_ids[picked[-1]] == "p19"
    few = spread(prompt_ids[:9], samples[:9], 8)  # 3 prompts: every first image, then seconds
    assert [prompt_ids[i] for i in few[:3]] == ["p00", "p01", "p02"] and len(few) == 8


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
