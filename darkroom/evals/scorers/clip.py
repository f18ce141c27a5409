"""CLIP (Radford et al. 2021), from a local folder or a hub id (`eval.clip_model`), in two roles:

- the `clip` part and the `clip_score` metric: 100 x the cosine of the image and prompt
  embeddings per image, averaged, floored at 0 (Hessel et al. 2021, as torchmetrics' CLIPScore
  defines it); prompts longer than CLIP's 77 tokens are truncated and counted;
- the `clip` feature extractor: image embeddings through the model's own processor, for CMMD
  and CLIP-FID (Kynkäänniemi et al. 2023).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.metrics.base import Context, RunScores, Statistic, Unavailable, mean_statistic
from darkroom.evals.scorers.features import FeatureExtractor
from darkroom.evals.units import (
    Extractor,
    Metric,
    Part,
    PartFn,
    PlannedPart,
    Scorer,
    WeightsMissing,
    weights_setting,
)
from darkroom.platform.data.records import file_sha256
from darkroom.platform.models.names import looks_local

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MODEL = weights_setting("clip_model", DEFAULT_CLIP,
                             "CLIP for clip_score: a local folder or hub id")
MAX_PROMPT_TOKENS = 77  # CLIP's text context, start and end tokens included (a long-text
# CLIP's config says its own: Long-CLIP's 248)


def load_clip(name_or_folder: str):
    """(CLIPModel, CLIPProcessor) from a local folder or a hub id, in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(name_or_folder).expanduser()
    local = looks_local(name_or_folder)
    if local and not (path / "config.json").is_file():
        raise WeightsMissing(
            f"CLIP folder `{name_or_folder}` has no config.json: give a folder saved with "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained, or a hub id"
        )
    try:
        model = CLIPModel.from_pretrained(str(path) if local else name_or_folder)
        processor = CLIPProcessor.from_pretrained(str(path) if local else name_or_folder)
    except OSError as err:
        raise WeightsMissing(
            f"CLIP model `{name_or_folder}` could not be loaded ({str(err).splitlines()[0]}); "
            "download it where there is network (`hf download ...`) and give its local folder"
        ) from err
    return model.eval(), processor


def image_embeddings(model, processor, images: Sequence[np.ndarray]):
    """CLIP image embeddings (projected, not normalised) as a torch tensor."""
    import torch

    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels.to(model.device, model.dtype))
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: output


# -- the clip_score part and metric -------------------------------------------------------------


def _build_part(planned: PlannedPart, device: str) -> PartFn:
    import torch

    model, processor = load_clip(planned.weights)
    model.to(device)
    tokenizer = processor.tokenizer
    # CLIP's 77 positions, or a long-text CLIP's (Long-CLIP, Zhang et al. 2024: 248)
    max_tokens = model.config.text_config.max_position_embeddings

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p or "") for p in batch["prompt"]]
        full = tokenizer(prompts, padding=False, truncation=False)["input_ids"]
        # Truncate with the tokenizer, which keeps the end token CLIP pools from
        text = tokenizer(prompts, padding=True, truncation=True, max_length=max_tokens,
                         return_tensors="pt")
        with torch.no_grad():
            txt = model.get_text_features(input_ids=text.input_ids.to(device),
                                          attention_mask=text.attention_mask.to(device))
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        img = image_embeddings(model, processor, images)
        img = img / img.norm(p=2, dim=-1, keepdim=True)
        txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
        return {"clip_score": (100 * (img * txt).sum(-1)).double().cpu().numpy(),
                "clip_truncated": np.array([len(ids) > max_tokens for ids in full])}

    return part


def clip_score(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """100 x cosine of CLIP image and prompt embeddings, averaged, floored at 0 (Hessel et al.
    2021, as torchmetrics' CLIPScore defines it)."""
    prompts = scores.column("prompt")
    has_prompt = np.array([bool(p) for p in prompts])
    if not has_prompt.any():
        raise Unavailable("no prompts in this run (class-conditional or unconditional)")
    mean = mean_statistic(scores.column("clip_score"), has_prompt)
    truncated = np.asarray(scores.column("clip_truncated"), dtype=bool)[has_prompt]
    return {"clip_score": Statistic(max(mean.value, 0.0),
                                    lambda counts: np.maximum(mean.resample(counts), 0.0),
                                    (0.0, 100.0)),
            "clip_prompts_truncated": Statistic(float(truncated.sum()))}


# -- the clip feature extractor -----------------------------------------------------------------


def _extractor_check(weights: str | None) -> str | None:
    name = weights or DEFAULT_CLIP
    if looks_local(name) and not (Path(name).expanduser() / "config.json").is_file():
        return f"CLIP folder `{name}` has no config.json"
    return None


def _extractor_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    model, processor = load_clip(weights or DEFAULT_CLIP)
    model.to(device)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        return image_embeddings(model, processor, images).float().cpu().numpy()

    return FeatureExtractor("clip", int(model.config.projection_dim),
                            _extractor_protocol(weights), fn)


def _extractor_protocol(weights: str | None) -> dict[str, Any]:
    name = weights or DEFAULT_CLIP
    config = Path(name).expanduser() / "config.json"
    identity = file_sha256(config) if config.is_file() else "hub"
    return {"extractor": "clip", "weights": name, "config_sha256": identity,
            "resize": "the CLIP processor's (shortest side, centre crop)",
            "features": "projected image embeddings"}


UNITS = (
    Scorer("clip", "clip", _build_part, ("clip_score", "clip_truncated"),
           "CLIP image-prompt cosine per image, and whether the prompt was truncated",
           weights=CLIP_MODEL, protocol={"clip_max_tokens": MAX_PROMPT_TOKENS}),
    Metric("clip_score", "clip_score", True, Part("clip"),
           "image-prompt agreement under CLIP, 0-100", clip_score,
           other_keys={"clip_prompts_truncated": False}),
    Extractor("clip", _extractor_build, _extractor_protocol, "CLIP image embeddings",
              check=_extractor_check, weights=CLIP_MODEL),
)
