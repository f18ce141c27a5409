"""CLIP score per image against torchmetrics' CLIPScore called directly on the same data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.clip import clip_score, load_clip
from darkroom.evals.spec import EvalSpec
from darkroom.evals.units import PlannedPart


class _Unwrapped(torch.nn.Module):
    """torchmetrics 1.9 expects tensors from get_*_features; transformers 5 returns an output
    object (torchmetrics issue #3407). This hands it the pooled tensor and nothing else."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def _torchmetrics_scores(folder, images, prompts) -> list[float]:
    from torchmetrics.multimodal import CLIPScore

    model, processor = load_clip(str(folder))
    metric = CLIPScore(model_name_or_path=lambda: (_Unwrapped(model), processor))
    tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
    each = [float(metric(t, p)) for t, p in zip(tensors, prompts, strict=True)]
    metric.reset()
    return each, float(metric(tensors, prompts))


def test_clip_score_equals_torchmetrics(tiny_clip_dir):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(8)]
    prompts = ["a red fox", "a lighthouse at dusk", "soup", "two cats", "a tree", "blue sky",
               "an old map", "a bicycle"]
    part = build_part(PlannedPart(scorer="clip", weights=str(tiny_clip_dir)))
    ours = part(images, {"prompt": np.array(prompts, dtype=object)})
    each, corpus = _torchmetrics_scores(tiny_clip_dir, images, prompts)
    # torchmetrics floors each single-pair call at 0; the per-image scores themselves are signed
    assert np.maximum(ours["clip_score"], 0) == pytest.approx(each, abs=1e-4)
    assert (ours["clip_score"] > 0).any(), "the test needs some positive scores to compare"
    scores = RunScores("r", {"row_id": np.arange(8), "prompt": np.array(prompts, dtype=object),
                             **ours})
    assert clip_score(scores, Context(EvalSpec()))["clip_score"].value == pytest.approx(
        corpus, abs=1e-4)
    assert not ours["clip_truncated"].any()


def test_long_prompts_are_truncated_and_counted(tiny_clip_dir):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    # the byte-level tokenizer has one token per letter: 40 five-letter words are 200 tokens
    long = "light " * 40
    part = build_part(PlannedPart(scorer="clip", weights=str(tiny_clip_dir)))
    ours = part(images, {"prompt": np.array([long, "short"], dtype=object)})
    assert list(ours["clip_truncated"]) == [True, False]
    # the long prompt scores as its first 75 tokens do (77 with the start and end tokens)
    head = "light " * 15
    again = part(images[:1], {"prompt": np.array([head], dtype=object)})
    assert ours["clip_score"][0] == pytest.approx(again["clip_score"][0], abs=1e-4)
    scores = RunScores("r", {"row_id": np.arange(2), "prompt": np.array([long, "short"]),
                             **ours})
    assert clip_score(scores, Context(EvalSpec()))["clip_prompts_truncated"].value == 1


def test_a_long_text_clip_reads_its_own_length(tiny_clip_dir, tmp_path):
    """A CLIP whose text encoder has 248 positions (Long-CLIP, Zhang et al. 2024, in
    transformers' format) reads a 200-token prompt whole, scored as its text tower gives it,
    and truncates (and counts) only past 248."""
    import shutil

    import torch
    from transformers import CLIPModel, CLIPProcessor

    folder = tmp_path / "long-clip"
    shutil.copytree(tiny_clip_dir, folder)
    config = CLIPModel.from_pretrained(folder).config
    config.text_config.max_position_embeddings = 248
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(
        folder)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(2)]
    prompts = ["light " * 40, "light " * 60]  # 200 and 300 tokens (one a letter)
    ours = build_part(PlannedPart(scorer="clip", weights=str(folder)))(
        images, {"prompt": np.array(prompts, dtype=object)})
    assert list(ours["clip_truncated"]) == [False, True]
    with torch.no_grad():
        ids = processor.tokenizer(prompts[:1], return_tensors="pt").input_ids
        assert ids.shape[1] > 77
        txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        pixels = processor(images=images[:1], return_tensors="pt").pixel_values
        img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        expected = 100 * torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert ours["clip_score"][0] == pytest.approx(float(expected[0]), abs=1e-4)
