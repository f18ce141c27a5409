"""Feature extractors for FID and KID: uint8 HxWx3 images in, one float32 feature row each out.

Each extractor records its protocol (network, weights, resize) so that statistics made with one
protocol are never compared with features of another.

- `inception`: clean-fid's "clean" protocol (Parmar et al. 2022): PIL bicubic resize to 299x299 in
  float, then the TF-ported Inception-v3 of Heusel et al. 2017 (`inception-2015-12-05.pt`), 2048-d.
- `clip`: CLIP image embeddings (Radford et al. 2021) through the model's own processor, for
  CLIP-FID (Kynkäänniemi et al. 2023).
- `dinov2`: DINOv2 (Oquab et al. 2023) CLS features through dgm-eval's preprocessing (PIL
  bicubic resize to 224x224, ImageNet mean/std), for FD-DINOv2 (Stein et al. 2023); ViT-L/14
  (`facebook/dinov2-large`) unless other weights are given.
- `digits`: the bundled digits classifier's 64-d penultimate layer, standardised with the real
  training digits' statistics (protocol 2; see `_digits_build`).
- `tiny`: a fixed random conv net on a 32x32 clean resize; for smoke runs and tests only.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.platform.errors import UserError, did_you_mean

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)
INCEPTION_ENV = "DARKROOM_INCEPTION_WEIGHTS"
CLEANFID_CACHE = Path("/tmp")  # where clean-fid itself looks for (and downloads) the file
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINOV2 = "facebook/dinov2-large"  # ViT-L/14, as Stein et al. 2023 use
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsMissing(UserError):
    """An extractor's weights are not on this machine; the message says what to put where."""


@dataclass
class FeatureExtractor:
    """A loaded extractor: `fn` maps a batch of uint8 HxWx3 images to float32 N x num_features."""

    name: str
    num_features: int
    protocol: dict[str, Any]
    fn: Callable[[Sequence[np.ndarray]], np.ndarray] = field(repr=False)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of a batch as float32 N x num_features; no images give 0 rows."""
        if not len(images):
            return np.zeros((0, self.num_features), np.float32)
        return np.asarray(self.fn(images), dtype=np.float32).reshape(len(images), -1)


@dataclass(frozen=True)
class ExtractorEntry:
    """How to build an extractor; `protocol` and `check` answer cheaply, without loading it."""

    build: Callable[[str | None, str], FeatureExtractor]  # (weights, torch device)
    protocol: Callable[[str | None], dict[str, Any]]
    check: Callable[[str | None], str | None] = lambda weights: None
    description: str = ""


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


def _file_sha256(path: Path) -> str:
    stat = Path(path).stat()  # large weight files are hashed once per size and modification time
    return _sha256_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            "weights_sha256": _file_sha256(_inception_path(weights)),
            "resize": "clean-fid clean: PIL bicubic 299x299 float", "features": "pool3, 2048"}


# -- clip ---------------------------------------------------------------------------------------


def load_clip(name_or_folder: str):
    """(CLIPModel, CLIPProcessor) from a local folder or a hub id, in eval mode."""
    from transformers import CLIPModel, CLIPProcessor

    path = Path(name_or_folder).expanduser()
    looks_local = path.exists() or name_or_folder.startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file():
        raise WeightsMissing(
            f"CLIP folder `{name_or_folder}` has no config.json: give a folder saved with "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained, or a hub id"
        )
    try:
        model = CLIPModel.from_pretrained(str(path) if looks_local else name_or_folder)
        processor = CLIPProcessor.from_pretrained(str(path) if looks_local else name_or_folder)
    except OSError as err:
        raise WeightsMissing(
            f"CLIP model `{name_or_folder}` could not be loaded ({str(err).splitlines()[0]}); "
            "download it where there is network (`hf download ...`) and give its local folder"
        ) from err
    return model.eval(), processor


def _clip_check(weights: str | None) -> str | None:
    name = weights or DEFAULT_CLIP
    path = Path(name).expanduser()
    if (path.exists() or name.startswith((".", "/", "~"))) and not (path / "config.json").is_file():
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
    identity = _file_sha256(config) if config.is_file() else "hub"
    return {"extractor": "clip", "weights": name, "config_sha256": identity,
            "resize": "the CLIP processor's (shortest side, centre crop)",
            "features": "projected image embeddings"}


# -- digits -------------------------------------------------------------------------------------


def _digits_folder(weights: str | None) -> Path:
    from darkroom.platform.zoo.classifier import default_folder

    return Path(weights).expanduser() if weights else default_folder()


def _digits_check(weights: str | None) -> str | None:
    folder = _digits_folder(weights)
    if (folder / "config.json").is_file():
        return None
    return f"no digits classifier in {folder}; train it with `darkroom zoo train-digits`"


def load_digits(weights: str | None = None):
    """The digits classifier saved in `weights` (a folder), or the bundled one when None;
    raises `WeightsMissing` when it has not been trained."""
    reason = _digits_check(weights)
    if reason:
        raise WeightsMissing(reason)
    from darkroom.platform.zoo.classifier import load_digits_classifier

    return load_digits_classifier(_digits_folder(weights))


def to_float_nchw(images: Sequence[np.ndarray]):
    """uint8 HxWx3 images of one size -> float NCHW tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def per_size(fn: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[..., np.ndarray]:
    """Run a batch function on each group of same-sized images, keeping the order: one batch
    can span runs generated at different sizes."""

    def wrapped(images: Sequence[np.ndarray]) -> np.ndarray:
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        out: list[Any] = [None] * len(images)
        for members in groups.values():
            for i, row in zip(members, fn([images[i] for i in members]), strict=True):
                out[i] = row
        return np.stack(out)

    return wrapped


@functools.lru_cache(maxsize=4)
def _digits_standardisation(folder: str, weights_sha256: str) -> tuple[np.ndarray, float]:
    """The mean feature vector and RMS standard deviation of the real training digits under the
    classifier in `folder` (the sha names the weights, so new weights give new constants)."""
    import torch

    from darkroom.platform.zoo.data import digits_dataset

    model = load_digits(folder)
    images, _ = digits_dataset("train")
    with torch.no_grad():
        features = model.features(to_float_nchw(list(images))).double().numpy()
    mean = features.mean(axis=0)
    return mean, float(np.sqrt(((features - mean) ** 2).sum(axis=1).mean() / features.shape[1]))


def _digits_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch

    model = load_digits(weights).to(device)
    folder = _digits_folder(weights)
    # Protocol 2: the raw features average |x|^2 / d of about 130, so KID's kernel
    # (x.y / d + 1)^3 ran into the millions and KID into the thousands, often negative. Centred
    # on the real training digits' mean and divided by their RMS standard deviation (one number
    # for all dimensions: FID only scales by its square, rankings keep), x.y / d is about 1, as
    # for Inception features.
    mean, scale = _digits_standardisation(str(folder),
                                          _file_sha256(folder / "model.safetensors"))

    def fn(images: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            raw = model.features(to_float_nchw(images).to(device)).cpu().double().numpy()
        return (raw - mean) / scale

    return FeatureExtractor("digits", model.num_features, _digits_protocol(weights), per_size(fn))


def _digits_protocol(weights: str | None) -> dict[str, Any]:
    folder = _digits_folder(weights)
    if _digits_check(weights):
        raise WeightsMissing(_digits_check(weights))
    return {"extractor": "digits", "version": 2, "weights": "digits-classifier",
            "weights_sha256": _file_sha256(folder / "model.safetensors"),
            "resize": "bilinear antialias to 16x16", "features": "penultimate, 64",
            "standardised": "minus the real training digits' mean feature, over their RMS "
                            "standard deviation"}


# -- dinov2 -------------------------------------------------------------------------------------


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~"))


def _dinov2_check(weights: str | None) -> str | None:
    name = weights or DEFAULT_DINOV2
    fix = ("download it where there is network (e.g. `hf download facebook/dinov2-large "
           "--local-dir DIR`) and give that folder as `eval.dinov2_model` (or `eval.weights` "
           "with feature_extractor dinov2)")
    if _is_local(name):
        if (Path(name).expanduser() / "config.json").is_file():
            return None
        return f"DINOv2 folder `{name}` has no config.json (Dinov2Model.save_pretrained); {fix}"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return f"DINOv2 weights `{name}` are not on this machine (offline); {fix}"
    return None


def _dinov2_build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch
    from PIL import Image
    from transformers import Dinov2Model

    reason = _dinov2_check(weights)
    if reason:
        raise WeightsMissing(reason)
    name = weights or DEFAULT_DINOV2
    try:
        model = Dinov2Model.from_pretrained(
            str(Path(name).expanduser()) if _is_local(name) else name).eval().to(device)
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
                            _dinov2_protocol(weights), fn)


def _dinov2_protocol(weights: str | None) -> dict[str, Any]:
    name = weights or DEFAULT_DINOV2
    folder = Path(name).expanduser()
    identity = {"config_sha256": "hub"}
    if _is_local(name) and (folder / "config.json").is_file():
        identity = {"config_sha256": _file_sha256(folder / "config.json"),
                    "weights_sha256": [_file_sha256(p) for p in sorted(
                        folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))]}
    return {"extractor": "dinov2", "weights": name, **identity,
            "resize": "PIL bicubic 224x224 (8-bit), ImageNet mean/std (dgm-eval)",
            "features": "CLS token after the final layer norm"}


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
    _dinov2_build, _dinov2_protocol, _dinov2_check,
    "DINOv2 CLS features (dgm-eval preprocessing), for FD-DINOv2"))
register_extractor("digits", ExtractorEntry(
    _digits_build, _digits_protocol, _digits_check,
    "the bundled digits classifier's penultimate layer"))
register_extractor("tiny", ExtractorEntry(
    _tiny_build, _tiny_protocol, description="random conv net, for smoke runs and tests"))
