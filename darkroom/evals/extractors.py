"""Feature extractors for FID and KID: uint8 HxWx3 images in, one float32 feature row each out.

Each extractor records its protocol (network, weights, resize) so that statistics made with one
protocol are never compared with features of another.

- `inception`: clean-fid's "clean" protocol (Parmar et al. 2022): PIL bicubic resize to 299x299 in
  float, then the TF-ported Inception-v3 of Heusel et al. 2017 (`inception-2015-12-05.pt`), 2048-d.
- `clip`: CLIP image embeddings (Radford et al. 2021) through the model's own processor, for
  CLIP-FID (Kynkäänniemi et al. 2023).
- `dinov2`: DINOv2 (Oquab et al. 2023) CLS features through dgm-eval's preprocessing, for
  FD-DINOv2 (Stein et al. 2023) (built in `backbones.py`).
- `digits`: the bundled digits classifier's 64-d penultimate layer, standardised with the real
  training digits' statistics (protocol 2; built in `backbones.py`).
- `tiny`: a fixed random conv net on a 32x32 clean resize; for smoke runs and tests only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.backbones import (
    digits_build,
    digits_check,
    digits_protocol,
    dinov2_build,
    dinov2_check,
    dinov2_protocol,
    load_digits,
)
from darkroom.evals.extractor_types import (
    ExtractorEntry,
    FeatureExtractor,
    WeightsMissing,
    per_size,
    to_float_nchw,
)
from darkroom.platform.data.records import file_sha256
from darkroom.platform.errors import UserError, did_you_mean
from darkroom.platform.models.names import looks_local

__all__ = ["EXTRACTORS", "ExtractorEntry", "FeatureExtractor", "WeightsMissing",
           "check_extractor", "extractor_protocol", "load_digits", "load_extractor", "per_size",
           "register_extractor", "to_float_nchw"]

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)
INCEPTION_ENV = "DARKROOM_INCEPTION_WEIGHTS"
CLEANFID_CACHE = Path("/tmp")  # where clean-fid itself looks for (and downloads) the file
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


EXTRACTORS: dict[str, ExtractorEntry] = {}


def register_extractor(name: str, entry: ExtractorEntry) -> None:
    """Add an extractor under `name`; a name already taken raises ValueError."""
    if name in EXTRACTORS:
        raise ValueError(f"feature extractor `{name}` is already registered")
    EXTRACTORS[name] = entry


def _entry(name: str) -> ExtractorEntry:
    if name not in EXTRACTORS:
        raise UserError(f"unknown feature extractor `{name}`;{did_you_mean(name, EXTRACTORS)}")
    return EXTRACTORS[name]


def load_extractor(name: str, weights: str | None = None, device: str = "cpu") -> FeatureExtractor:
    """Build a registered extractor; missing weights raise `WeightsMissing` with the fix."""
    return _entry(name).build(weights, device)


def check_extractor(name: str, weights: str | None = None) -> str | None:
    """Why the extractor cannot be built here (missing weights), or None when it looks fine."""
    return _entry(name).check(weights)


def extractor_protocol(name: str, weights: str | None = None) -> dict[str, Any]:
    """The extractor's protocol (network, weights identity, resize); its weights must exist."""
    return _entry(name).protocol(weights)


def _clean_resizer(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """clean-fid's resize: PIL bicubic on each channel in float, no quantisation afterwards."""
    from cleanfid.resize import make_resizer

    return make_resizer("PIL", False, "bicubic", (size, size))


# -- inception ----------------------------------------------------------------------------------


def inception_candidates(weights: str | None) -> list[Path]:
    """Where the Inception file is looked for, in order."""
    places = [weights, os.environ.get(INCEPTION_ENV), str(CLEANFID_CACHE)]
    candidates = []
    for place in places:
        if place:
            path = Path(place).expanduser()
            candidates.append(path if path.suffix == ".pt" else path / INCEPTION_FILE)
    return candidates


def _inception_check(weights: str | None) -> str | None:
    candidates = inception_candidates(weights)
    if any(path.is_file() for path in candidates):
        return None
    return (
        f"Inception weights `{INCEPTION_FILE}` not found (looked in "
        f"{', '.join(str(p) for p in candidates)}); download {INCEPTION_URL} on a machine with "
        f"network and put it in one of those places, or point `eval.weights` / {INCEPTION_ENV} "
        "at it"
    )


def _inception_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    path = _inception_path(weights)
    model = InceptionV3W(str(path.parent), download=False).eval()
    if path.name != INCEPTION_FILE:  # InceptionV3W wants the canonical name; load it directly
        model.base = torch.jit.load(str(path)).eval()
        model.layers = model.base.layers
    model.to(device)
    resize = _clean_resizer(299)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack([resize(image) for image in images]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(device)).cpu().numpy()

    return FeatureExtractor("inception", 2048, _inception_protocol(weights), fn)


def _inception_path(weights: str | None) -> Path:
    reason = _inception_check(weights)
    if reason:
        raise WeightsMissing(reason)
    return next(p for p in inception_candidates(weights) if p.is_file())


def _inception_protocol(weights: str | None) -> dict[str, Any]:
    return {"extractor": "inception", "weights": INCEPTION_FILE,
            "weights_sha256": file_sha256(_inception_path(weights)),
            "resize": "clean-fid clean: PIL bicubic 299x299 float", "features": "pool3, 2048"}


# -- clip ---------------------------------------------------------------------------------------


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


def _clip_check(weights: str | None) -> str | None:
    name = weights or DEFAULT_CLIP
    if looks_local(name) and not (Path(name).expanduser() / "config.json").is_file():
        return f"CLIP folder `{name}` has no config.json"
    return None


def image_embeddings(model, processor, images: Sequence[np.ndarray]):
    """CLIP image embeddings (projected, not normalised) as a torch tensor."""
    import torch

    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels.to(model.device, model.dtype))
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: output


def _clip_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    name = weights or DEFAULT_CLIP
    model, processor = load_clip(name)
    model.to(device)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        return image_embeddings(model, processor, images).float().cpu().numpy()

    return FeatureExtractor("clip", int(model.config.projection_dim), _clip_protocol(weights), fn)


def _clip_protocol(weights: str | None) -> dict[str, Any]:
    name = weights or DEFAULT_CLIP
    config = Path(name).expanduser() / "config.json"
    identity = file_sha256(config) if config.is_file() else "hub"
    return {"extractor": "clip", "weights": name, "config_sha256": identity,
            "resize": "the CLIP processor's (shortest side, centre crop)",
            "features": "projected image embeddings"}


# -- tiny ---------------------------------------------------------------------------------------


def tiny_net(num_features: int = 16, seed: int = 0):
    """A fixed random conv net: its features mean nothing, its code path is the real one."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, num_features),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return net.eval()


def _tiny_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch

    net = tiny_net()
    resize = _clean_resizer(32)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:  # tiny: always on the CPU
        batch = np.stack([resize(image) for image in images]).transpose(0, 3, 1, 2) / 255.0
        with torch.no_grad():
            return net(torch.from_numpy(batch).float()).numpy()

    return FeatureExtractor("tiny", 16, _tiny_protocol(weights), fn)


def _tiny_protocol(weights: str | None) -> dict[str, Any]:
    return {"extractor": "tiny", "weights": "random, seed 0",
            "resize": "clean-fid clean: PIL bicubic 32x32 float", "features": "16"}


register_extractor("inception", ExtractorEntry(
    _inception_build, _inception_protocol, _inception_check,
    "Inception-v3 pool3 (clean-fid clean protocol)"))
register_extractor("clip", ExtractorEntry(
    _clip_build, _clip_protocol, _clip_check, "CLIP image embeddings"))
register_extractor("dinov2", ExtractorEntry(
    dinov2_build, dinov2_protocol, dinov2_check,
    "DINOv2 CLS features (dgm-eval preprocessing), for FD-DINOv2"))
register_extractor("digits", ExtractorEntry(
    digits_build, digits_protocol, digits_check,
    "the bundled digits classifier's penultimate layer"))
register_extractor("tiny", ExtractorEntry(
    _tiny_build, _tiny_protocol, description="random conv net, for smoke runs and tests"))
