"""The LAION aesthetic predictor v2 on a tiny random-init CLIP and a random head saved under the
published file name, through its registered part, against the predictor computed here from its
definition (L2-normalised image embedding, five affine layers, no activations)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.aesthetic import HEAD, head
from darkroom.evals.units import PlannedPart, WeightsMissing


def test_the_score_is_the_head_on_the_normalised_embedding(tiny_clip_dir, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    folder = tmp_path / "aesthetic"
    shutil.copytree(tiny_clip_dir, folder)
    model = CLIPModel.from_pretrained(folder).eval()
    torch.manual_seed(3)
    mlp = head(model.config.projection_dim)
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, folder / HEAD)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    scores = build_part(PlannedPart(scorer="aesthetic", weights=str(folder)))(images, {})[
        "aesthetic"]
    processor = CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt").pixel_values
        x = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    x = x.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    state = {k: v.double().numpy() for k, v in mlp.state_dict().items()}
    for i in (0, 2, 4, 6, 7):  # dropouts are the identity at inference
        x = x @ state[f"{i}.weight"].T + state[f"{i}.bias"]
    np.testing.assert_allclose(scores, x[:, 0], atol=1e-6)


def test_without_the_head_it_names_the_file_and_the_setting(tiny_clip_dir):
    with pytest.raises(WeightsMissing, match=r"eval.aesthetic_model.*|linearMSE"):
        build_part(PlannedPart(scorer="aesthetic", weights=str(tiny_clip_dir)))
    with pytest.raises(WeightsMissing, match="eval.aesthetic_model"):
        build_part(PlannedPart(scorer="aesthetic", weights=""))
