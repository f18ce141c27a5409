"""Judge the digits pipelines: generate images of requested digits and let the classifier read
them (class accuracy), and a 64-d-feature FID (Heusel et al. 2017) against the held-out digits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darkroom.platform.zoo.data import DIGIT_WORDS, digits_dataset, to_tensor

DARKROOM_JSON = "darkroom.json"


def read_darkroom_json(folder: str | Path) -> dict[str, Any]:
    """The small `darkroom.json` next to model_index.json: family, default guidance, ..."""
    path = Path(folder) / DARKROOM_JSON
    return json.loads(path.read_text()) if path.exists() else {}


@torch.no_grad()
def generate_digits(pipe, digits: Sequence[int], guidance_scale: float, steps: int = 25,
                    seed: int = 0, batch_size: int = 100, scheduler=None) -> torch.Tensor:
    """Images (float NCHW in [0, 1]) of `digits` from a digits DiT or SD pipeline.

    The DiT gets class ids; the SD pipeline gets "a handwritten digit seven"-style prompts.
    `scheduler`, if given, replaces the pipeline's (e.g. `DPMSolverMultistepScheduler`).
    """
    from diffusers import DiTPipeline

    from darkroom.platform.zoo.ldm import prompt_for

    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(digits), batch_size):
        chunk = [int(d) for d in digits[start:start + batch_size]]
        generator = torch.Generator().manual_seed(seed + start)
        if isinstance(pipe, DiTPipeline):
            images = pipe(class_labels=chunk, num_inference_steps=steps, generator=generator,
                          guidance_scale=guidance_scale, output_type="pt").images
        else:
            images = pipe(prompt=[prompt_for(d) for d in chunk], num_inference_steps=steps,
                          generator=generator, guidance_scale=guidance_scale,
                          output_type="pt").images
        out.append(torch.as_tensor(images).float())
    return torch.cat(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are samples)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # a few ReLU units never fire, which makes the covariances singular; a tiny ridge keeps
    # sqrtm well defined and moves the result by far less than its sampling noise
    ridge = np.eye(len(s1)) * 1e-6
    covmean = linalg.sqrtm((s1 + ridge) @ (s2 + ridge)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def evaluate_pipeline(pipe, classifier, guidance_scale: float, n: int = 200, steps: int = 25,
                      seed: int = 0) -> dict[str, float]:
    """Class accuracy and FID (classifier features, vs. the test split) of n generated images,
    n/10 of each digit, with the pipeline's own scheduler."""
    digits = np.arange(n) % len(DIGIT_WORDS)
    images = generate_digits(pipe, digits, guidance_scale, steps=steps, seed=seed)
    predicted = classifier.predict(images).numpy()
    real = to_tensor(digits_dataset("test")[0])
    fid = frechet_distance(classifier.features(images).numpy(), classifier.features(real).numpy())
    return {"class_accuracy": float((predicted == digits).mean()), "fid_vs_test": fid,
            "guidance_scale": guidance_scale, "n": n, "steps": steps}


def real_fid_floor(classifier, n: int = 200, seed: int = 0) -> float:
    """FID of n real train images vs. the test split, the same sample sizes as the generated
    sets (FID's bias depends strongly on n). A rough floor only: the classifier saw these train
    images, so their features are a little more confident than those of unseen digits."""
    train = digits_dataset("train")[0]
    pick = np.random.default_rng(seed).choice(len(train), size=n, replace=False)
    with torch.no_grad():
        a = classifier.features(to_tensor(train[pick])).numpy()
        b = classifier.features(to_tensor(digits_dataset("test")[0])).numpy()
    return frechet_distance(a, b)
