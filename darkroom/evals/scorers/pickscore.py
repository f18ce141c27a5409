"""The `pickscore` part and metric: PickScore (Kirstain et al. 2023, "Pick-a-Pic"), a CLIP
ViT-H/14 fine-tuned on human choices between images for one prompt. Per (image, prompt) the
score is CLIP's logit scale times the cosine of the L2-normalised image and prompt embeddings;
higher is preferred. Weights that are not on this machine raise `WeightsMissing` with what to
put where, and the metric is then recorded as missing with that reason.

ImageReward (Xu et al. 2023) and HPS v2 (Wu et al. 2023) are not registered: `image-reward` 1.5
fails to import with transformers 5 (its BLIP code imports `apply_chunking_to_forward` from
`transformers.modeling_utils`), and `hpsv2` 1.2 pins protobuf 3.20 and pytest 7.2, which would
downgrade what the project runs on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.metrics.base import Context, RunScores, Statistic, Unavailable, mean_statistic
from darkroom.evals.units import (
    Metric,
    Part,
    PartFn,
    PlannedPart,
    Scorer,
    WeightsMissing,
    weights_setting,
)
from darkroom.platform.models.names import looks_local

PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the processor PickScore uses
PICKSCORE_MODEL = weights_setting(
    "pickscore_model", "yuvalkirstain/PickScore_v1", "PickScore's CLIP: a local folder (model "
    "and processor) or hub id (processor: laion/CLIP-ViT-H-14-laion2B-s32B-b79K)")


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


def _build(planned: PlannedPart, device: str) -> PartFn:
    scorer = PickScore(planned.weights, device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p or "") for p in batch.get("prompt", [""] * len(images))]
        return {"pickscore": np.asarray(scorer.score(images, prompts), dtype=np.float64)}

    return part


def pickscore(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences;
    per image, the CLIP logit scale x cosine of the image and prompt embeddings; averaged."""
    prompts = scores.column("prompt")
    has_prompt = np.array([bool(p) for p in prompts])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run: PickScore judges an image against its prompt")
    return {"pickscore": mean_statistic(scores.column("pickscore"), has_prompt)}


UNITS = (
    Scorer("pickscore", "preference", _build, ("pickscore",),
           "PickScore (Kirstain et al. 2023) of each image against its prompt",
           weights=PICKSCORE_MODEL),
    Metric("pickscore", "pickscore", True, Part("pickscore"),
           "human-preference score of image and prompt (PickScore)", pickscore),
)
