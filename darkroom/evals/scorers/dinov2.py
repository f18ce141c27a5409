"""The `dinov2` feature extractor: DINOv2 (Oquab et al. 2023) CLS features through dgm-eval's
preprocessing (PIL bicubic resize to 224x224, ImageNet mean/std), for FD-DINOv2 (Stein et al.
2023); ViT-L/14 (`facebook/dinov2-large`) unless other weights are given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.scorers.features import FeatureExtractor
from darkroom.evals.units import Extractor, WeightsMissing, weights_setting
from darkroom.platform.data.records import file_sha256
from darkroom.platform.models.names import looks_local

DEFAULT_DINOV2 = "facebook/dinov2-large"  # ViT-L/14, as Stein et al. 2023 use
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_MODEL = weights_setting("dinov2_model", DEFAULT_DINOV2,
                               "DINOv2 for fd_dinov2: a local folder or hub id")


def dinov2_check(weights: str | None) -> str | None:
    """Why DINOv2 cannot be loaded here (no folder, or a hub id offline), or None."""
    name = weights or DEFAULT_DINOV2
    fix = ("download it where there is network (e.g. `hf download facebook/dinov2-large "
           "--local-dir DIR`) and give that folder as `eval.dinov2_model` (or `eval.weights` "
           "with feature_extractor dinov2)")
    if looks_local(name):
        if (Path(name).expanduser() / "config.json").is_file():
            return None
        return f"DINOv2 folder `{name}` has no config.json (Dinov2Model.save_pretrained); {fix}"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return f"DINOv2 weights `{name}` are not on this machine (offline); {fix}"
    return None


def dinov2_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    """The DINOv2 extractor: CLS features with dgm-eval's preprocessing."""
    import torch
    from PIL import Image
    from transformers import Dinov2Model

    reason = dinov2_check(weights)
    if reason:
        raise WeightsMissing(reason)
    name = weights or DEFAULT_DINOV2
    try:
        model = Dinov2Model.from_pretrained(
            str(Path(name).expanduser()) if looks_local(name) else name).eval().to(device)
    except OSError as err:
        raise WeightsMissing(f"DINOv2 `{name}` could not be loaded "
                             f"({str(err).splitlines()[0]}); give a local folder as "
                             "`eval.dinov2_model`") from err
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        # dgm-eval: PIL bicubic resize of the 8-bit image to 224x224, to [0, 1], ImageNet norm
        resized = np.stack([np.asarray(Image.fromarray(image).convert("RGB").resize(
            (224, 224), Image.Resampling.BICUBIC)) for image in images])
        batch = (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        with torch.no_grad():
            out = model(pixel_values=batch.to(device))
        return out.pooler_output.float().cpu().numpy()  # the CLS token after the final norm

    return FeatureExtractor("dinov2", int(model.config.hidden_size),
                            dinov2_protocol(weights), fn)


def dinov2_protocol(weights: str | None) -> dict[str, Any]:
    """The DINOv2 extractor's protocol: weights identity, resize, which features."""
    name = weights or DEFAULT_DINOV2
    folder = Path(name).expanduser()
    identity = {"config_sha256": "hub"}
    if looks_local(name) and (folder / "config.json").is_file():
        identity = {"config_sha256": file_sha256(folder / "config.json"),
                    "weights_sha256": [file_sha256(p) for p in sorted(
                        folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))]}
    return {"extractor": "dinov2", "weights": name, **identity,
            "resize": "PIL bicubic 224x224 (8-bit), ImageNet mean/std (dgm-eval)",
            "features": "CLS token after the final layer norm"}


UNITS = (
    Extractor("dinov2", dinov2_build, dinov2_protocol,
              "DINOv2 CLS features (dgm-eval preprocessing), for FD-DINOv2", check=dinov2_check,
              weights=DINOV2_MODEL),
)
