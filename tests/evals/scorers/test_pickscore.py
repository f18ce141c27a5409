"""PickScore with a small random-init CLIP built here, through its registered part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.evals.scorers.actor import build_part
from darkroom.evals.units import PlannedPart, WeightsMissing


def _images(count: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def _part(weights: str):
    return build_part(PlannedPart(scorer="pickscore", weights=weights))


def test_pickscore_is_the_logit_scale_times_the_cosine(tiny_clip_dir):
    """Kirstain et al. 2023: exp(t) <E_img / |E_img|, E_txt / |E_txt|>, with the embeddings
    computed here from the towers and projections."""
    from transformers import CLIPModel, CLIPProcessor

    images = _images(4, size=48, seed=4)
    prompts = ["a red fox", "soup", "an old map", "two cats"]
    scores = _part(str(tiny_clip_dir))(images, {"prompt": np.array(prompts, dtype=object)})[
        "pickscore"]
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match="eval.pickscore_model"):
        _part("yuvalkirstain/PickScore_v1")
    with pytest.raises(WeightsMissing, match="has no config.json"):
        _part(str(tmp_path))
