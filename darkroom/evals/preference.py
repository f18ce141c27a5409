"""Preference scorers: models trained on human choices between images for one prompt, giving one
score per (image, prompt); higher is preferred.

A scorer is anything with `score(images, prompts) -> one float per image` (uint8 HxWx3 RGB
images, one prompt each). `load_scorer(name, weights, device)` builds a registered one; weights
that are not on this machine raise `WeightsMissing` with what to put where, and the metric is
then recorded as missing with that reason.

- `pickscore` (Kirstain et al. 2023, "Pick-a-Pic"): CLIP ViT-H/14 fine-tuned on Pick-a-Pic; the
  score is CLIP's logit scale times the cosine of the L2-normalised image and prompt embeddings.

ImageReward (Xu et al. 2023) and HPS v2 (Wu et al. 2023) are not registered: `image-reward` 1.5
fails to import with transformers 5 (its BLIP code imports `apply_chunking_to_forward` from
`transformers.modeling_utils`), and `hpsv2` 1.2 pins protobuf 3.20 and pytest 7.2, which would
downgrade what the project runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from darkroom.evals.extractor_types import WeightsMissing
from darkroom.platform.errors import UserError, did_you_mean
from darkroom.platform.models.names import looks_local

PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the processor PickScore uses


class PreferenceScorer(Protocol):
    """Images and their prompts in, one preference score per image out."""

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """One float per image; higher is preferred."""


@dataclass(frozen=True)
class ScorerEntry:
    """How to build a scorer: `load(weights, device)`."""

    load: Callable[[str, str], PreferenceScorer]
    description: str


class PickScore:
    """PickScore (Kirstain et al. 2023) from a local folder (model and processor saved there)
    or a hub id (processor from the LAION CLIP-H repository, as the authors load it)."""

    def __init__(self, weights: str, device: str = "cpu") -> None:
        from transformers import AutoProcessor, CLIPModel

        local = looks_local(weights)
        folder = Path(weights).expanduser()
        if local and not (folder / "config.json").is_file():
            raise WeightsMissing(
                f"PickScore folder `{weights}` has no config.json: save the model "
                "(CLIPModel.save_pretrained) and its processor (AutoProcessor.save_pretrained) "
                "into one folder and give it as `eval.pickscore_model`")
        try:
            self.model = CLIPModel.from_pretrained(str(folder) if local else weights).eval()
            self.processor = AutoProcessor.from_pretrained(
                str(folder) if local else PICKSCORE_PROCESSOR)
        except OSError as err:
            raise WeightsMissing(
                f"PickScore `{weights}` could not be loaded ({str(err).splitlines()[0]}); "
                f"download yuvalkirstain/PickScore_v1 and {PICKSCORE_PROCESSOR}'s processor "
                "where there is network, save both into one folder and give it as "
                "`eval.pickscore_model`") from err
        self.device = device
        self.model.to(device)

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """logit_scale.exp() x cosine(image embedding, prompt embedding), per image."""
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        text = self.processor(text=list(prompts), padding=True, truncation=True, max_length=77,
                              return_tensors="pt")
        with torch.no_grad():
            image = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            words = _pooled(self.model.get_text_features(
                input_ids=text.input_ids.to(self.device),
                attention_mask=text.attention_mask.to(self.device)))
            image = image / image.norm(dim=-1, keepdim=True)
            words = words / words.norm(dim=-1, keepdim=True)
            scores = self.model.logit_scale.exp() * (image * words).sum(-1)
        return scores.double().cpu().numpy()


def _pooled(out: Any):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5


SCORERS: dict[str, ScorerEntry] = {
    "pickscore": ScorerEntry(lambda weights, device: PickScore(weights, device),
                             "PickScore (Kirstain et al. 2023)"),
}


def load_scorer(name: str, weights: str, device: str = "cpu") -> PreferenceScorer:
    """A registered preference scorer; missing weights raise `WeightsMissing` with the fix."""
    if name not in SCORERS:
        raise UserError(f"unknown preference scorer `{name}`;{did_you_mean(name, SCORERS)}")
    return SCORERS[name].load(weights, device)
