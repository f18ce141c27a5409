"""The `aesthetic` part and metric: the LAION aesthetic predictor v2 (Schuhmann et al. 2022,
`christophschuhmann/improved-aesthetic-predictor`), an MLP on the L2-normalised CLIP ViT-L/14
image embedding trained on SAC, LAION-Logos and AVA ratings (about 1 to 10; higher looks better).
Its head (`sac+logos+ava1-l14-linearMSE.pth`) is loaded into the same five linear layers here,
without the authors' package; CLIP comes from transformers. Weights that are not on this machine
raise `WeightsMissing` with what to put where, and the metric is then missing with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from darkroom.evals.metrics.base import Context, RunScores, Statistic, mean_statistic
from darkroom.evals.units import (
    Metric,
    Part,
    PartFn,
    PlannedPart,
    Scorer,
    WeightsMissing,
    weights_setting,
)

HEAD = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            + HEAD.replace("+", "%2B"))
AESTHETIC_MODEL = weights_setting(
    "aesthetic_model", "", "a folder holding CLIP ViT-L/14 (CLIPModel and its processor, "
    f"save_pretrained) and the LAION aesthetic head `{HEAD}`")
# the published MLP: Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64),
# Dropout, Linear(64, 16), Linear(16, 1): the linear layers' indices in its state dict
LINEAR = (0, 2, 4, 6, 7)


def head(width: int):
    """The aesthetic MLP (dropouts kept so the state dict's indices match), for `width`-wide
    embeddings."""
    from torch import nn

    return nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                         nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1),
                         nn.Linear(64, 16), nn.Linear(16, 1))


class Aesthetic:
    """CLIP image embedding, L2-normalised, through the aesthetic head."""

    def __init__(self, weights: str, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(weights).expanduser()
        if not weights or not (folder / "config.json").is_file() or not (folder / HEAD).is_file():
            raise WeightsMissing(
                f"the aesthetic predictor needs a folder with CLIP ViT-L/14 (openai/clip-vit-"
                f"large-patch14, save_pretrained with its processor) and `{HEAD}` ({HEAD_URL}); "
                f"give it as `eval.aesthetic_model` (got `{weights}`)")
        self.model = CLIPModel.from_pretrained(folder).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(folder)
        state = torch.load(folder / HEAD, map_location="cpu", weights_only=True)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        self.head = head(self.model.config.projection_dim)
        self.head.load_state_dict(state)
        self.head.eval().to(device)
        self.device = device

    def score(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        pixels = self.processor(images=images, return_tensors="pt").pixel_values
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device))
            embedding = out if isinstance(out, torch.Tensor) else out.pooler_output
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
            return self.head(embedding).squeeze(-1).double().cpu().numpy()


def _build(planned: PlannedPart, device: str) -> PartFn:
    scorer = Aesthetic(planned.weights, device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"aesthetic": np.asarray(scorer.score(images), dtype=np.float64)}

    return part


def aesthetic(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """The LAION aesthetic predictor v2's score per image, averaged."""
    return {"aesthetic": mean_statistic(np.asarray(scores.column("aesthetic"), np.float64))}


UNITS = (
    Scorer("aesthetic", "reward", _build, ("aesthetic",),
           "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP) of each image",
           weights=AESTHETIC_MODEL),
    Metric("aesthetic", "aesthetic", True, Part("aesthetic"),
           "LAION aesthetic predictor v2: how good an image looks, about 1 to 10", aesthetic),
)
