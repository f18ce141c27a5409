"""The `inception` feature extractor: clean-fid's "clean" protocol (Parmar et al. 2022), a PIL
bicubic resize to 299x299 in float, then the TF-ported Inception-v3 of Heusel et al. 2017
(`inception-2015-12-05.pt`), pool3, 2048-d: the features of FID and KID.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.scorers.features import FeatureExtractor
from darkroom.evals.scorers.images import clean_resizer
from darkroom.evals.units import Extractor, WeightsMissing
from darkroom.platform.data.records import file_sha256

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)
INCEPTION_ENV = "DARKROOM_INCEPTION_WEIGHTS"
CLEANFID_CACHE = Path("/tmp")  # where clean-fid itself looks for (and downloads) the file


def inception_candidates(weights: str | None) -> list[Path]:
    """Where the Inception file is looked for, in order."""
    places = [weights, os.environ.get(INCEPTION_ENV), str(CLEANFID_CACHE)]
    candidates = []
    for place in places:
        if place:
            path = Path(place).expanduser()
            candidates.append(path if path.suffix == ".pt" else path / INCEPTION_FILE)
    return candidates


def _check(weights: str | None) -> str | None:
    candidates = inception_candidates(weights)
    if any(path.is_file() for path in candidates):
        return None
    return (
        f"Inception weights `{INCEPTION_FILE}` not found (looked in "
        f"{', '.join(str(p) for p in candidates)}); download {INCEPTION_URL} on a machine with "
        f"network and put it in one of those places, or point `eval.weights` / {INCEPTION_ENV} "
        "at it"
    )


def _path(weights: str | None) -> Path:
    reason = _check(weights)
    if reason:
        raise WeightsMissing(reason)
    return next(p for p in inception_candidates(weights) if p.is_file())


def _build(weights: str | None, device: str = "cpu") -> FeatureExtractor:
    import torch
    from cleanfid.inception_torchscript import InceptionV3W

    path = _path(weights)
    model = InceptionV3W(str(path.parent), download=False).eval()
    if path.name != INCEPTION_FILE:  # InceptionV3W wants the canonical name; load it directly
        model.base = torch.jit.load(str(path)).eval()
        model.layers = model.base.layers
    model.to(device)
    resize = clean_resizer(299)

    def fn(images: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack([resize(image) for image in images]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(device)).cpu().numpy()

    return FeatureExtractor("inception", 2048, _protocol(weights), fn)


def _protocol(weights: str | None) -> dict[str, Any]:
    return {"extractor": "inception", "weights": INCEPTION_FILE,
            "weights_sha256": file_sha256(_path(weights)),
            "resize": "clean-fid clean: PIL bicubic 299x299 float", "features": "pool3, 2048"}


UNITS = (
    Extractor("inception", _build, _protocol, "Inception-v3 pool3 (clean-fid clean protocol)",
              check=_check),
)
