"""The `clip_direction` part and its metrics: does an edit move the image the way its prompt
says, and how much of the source does it keep, in CLIP's space (`eval.clip_model`).

- `clip_direction`: CLIP directional similarity (Gal et al. 2022, StyleGAN-NADA; as
  InstructPix2Pix, Brooks et al. 2023, reports it): the cosine of the image change
  E(edit) - E(source) and the text change E(prompt) - E(source caption). Rows carry no caption
  of their source, so the source caption is the empty prompt: the text change is the prompt's
  own direction from CLIP's unconditioned text embedding.
- `clip_image_similarity`: the cosine of E(edit) and E(source) (InstructPix2Pix's "CLIP image
  similarity"): how much of the source the edit keeps.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from darkroom.evals.metrics.base import Context, RunScores, Statistic, Unavailable, mean_statistic
from darkroom.evals.scorers.clip import image_embeddings, load_clip
from darkroom.evals.scorers.preservation import sources
from darkroom.evals.units import Metric, Part, PartFn, PlannedPart, Scorer

SOURCE_CAPTION = ""


def _build(planned: PlannedPart, device: str) -> PartFn:
    import torch

    model, processor = load_clip(planned.weights)
    model.to(device)
    tokenizer = processor.tokenizer

    def text(prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt",
                           max_length=model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            out = model.get_text_features(input_ids=tokens.input_ids.to(device),
                                          attention_mask=tokens.attention_mask.to(device))
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = batch.get("input_images", [None] * len(images))
        direction = np.full(len(images), np.nan)
        similarity = np.full(len(images), np.nan)
        found = [sources(r, (im.shape[1], im.shape[0])) for im, r in zip(images, records,
                                                                           strict=True)]
        edited = [i for i, f in enumerate(found) if f is not None]
        if not edited:
            return {"clip_direction": direction, "clip_image_similarity": similarity}
        edits = image_embeddings(model, processor, [images[i] for i in edited]).double()
        originals = image_embeddings(model, processor, [found[i][0] for i in edited]).double()
        prompts = [str(batch["prompt"][i] or "") for i in edited]
        words = text(prompts).double()
        neutral = text([SOURCE_CAPTION]).double()
        cosine = torch.nn.functional.cosine_similarity
        direction[edited] = cosine(edits - originals, words - neutral).cpu().numpy()
        similarity[edited] = cosine(edits, originals).cpu().numpy()
        return {"clip_direction": direction, "clip_image_similarity": similarity}

    return part


def _mean(scores: RunScores, column: str) -> dict[str, Statistic]:
    values = np.asarray(scores.column(column), dtype=np.float64)
    edited = ~np.isnan(values)
    if not edited.any():
        raise Unavailable("no edited images in this run (no source image recorded with a row)")
    return {column: mean_statistic(np.where(edited, values, 0.0), edited, (-1.0, 1.0))}


def clip_direction(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Mean CLIP directional similarity of the edits (Gal et al. 2022)."""
    return _mean(scores, "clip_direction")


def clip_image_similarity(scores: RunScores, ctx: Context) -> dict[str, Statistic]:
    """Mean CLIP cosine of each edit and its source."""
    return _mean(scores, "clip_image_similarity")


UNITS = (
    Scorer("clip_direction", "edit", _build, ("clip_direction", "clip_image_similarity"),
           "CLIP directional similarity and image similarity of each edit to its source",
           resolve_weights=lambda spec, part: spec.clip_model),
    Metric("clip_direction", "clip_direction", True, Part("clip_direction"),
           "how far an edit moves its source the way the prompt says, in CLIP (Gal et al. "
           "2022)", clip_direction),
    Metric("clip_image_similarity", "clip_image_similarity", True, Part("clip_direction"),
           "CLIP cosine of an edit and its source: what the edit keeps", clip_image_similarity),
)
