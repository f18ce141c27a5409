"""Independent reference computations for the metric tests, written from the papers' formulas
with numpy and scipy (never from Darkroom's code), and the test data they are checked on."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.spatial.distance import cdist


def gaussian_features(seed: int, n: int = 300, d: int = 12, shift: float = 0.0,
                      seed_data: int | None = None) -> np.ndarray:
    """Correlated Gaussian features: `seed` fixes the distribution, `seed_data` the sample."""
    mixing = np.random.default_rng(seed).normal(size=(d, d)) / np.sqrt(d)
    rng = np.random.default_rng(seed if seed_data is None else seed_data)
    return rng.normal(size=(n, d)) @ mixing + shift


def expand(x: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A resample written out: each row repeated as often as drawn, with its source index."""
    source = np.repeat(np.arange(len(x)), counts)
    return x[source], source


def gaussian_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The Fréchet distance between two Gaussians (Dowson & Landau 1982; FID, Heusel et al.
    2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). (S1 S2)^1/2 has the trace of
    (S1^1/2 S2 S1^1/2)^1/2, which is symmetric PSD."""
    root = scipy.linalg.sqrtm(s1)
    middle = np.linalg.eigvalsh(root @ s2 @ root)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def independent_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID of two feature sets: the Fréchet distance of their Gaussians (covariance with n-1)."""
    mx, my = x.mean(0), y.mean(0)
    sx = (x - mx).T @ (x - mx) / (len(x) - 1)
    sy = (y - my).T @ (y - my) / (len(y) - 1)
    return gaussian_fid(mx, sx, my, sy)


def independent_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 over the whole sets (Bińkowski et al.)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def independent_mmd(x, y, kernel, source=None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3); pairs of rows drawn from the same source row
    are left out of the within-set mean, as the pair (i, i) is."""
    source = np.arange(len(x)) if source is None else source
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    distinct = source[:, None] != source[None, :]
    m = len(y)
    return float(kxx[distinct].sum() / distinct.sum()
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def rbf(sigma):
    """The Gaussian RBF kernel exp(-||a - b||^2 / (2 sigma^2)), with scipy's distances."""
    return lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))


def independent_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Kynkäänniemi et al. 2019 (precision, recall) and Naeem et al. 2020 (density, coverage)
    with scipy distances; a sample's radius is its k-th nearest other sample of its set."""
    real_radius = np.sort(cdist(real, real), axis=1)[:, k]  # column 0: the sample itself
    fake_radius = np.sort(cdist(fake, fake), axis=1)[:, k]
    d = cdist(fake, real)  # fake x real
    return {
        "precision": float(np.mean([(d[j] <= real_radius).any() for j in range(len(fake))])),
        "recall": float(np.mean([(d[:, i] <= fake_radius).any() for i in range(len(real))])),
        "density": float((d <= real_radius[None, :]).sum() / (k * len(fake))),
        "coverage": float(np.mean([(d[:, i] <= real_radius[i]).any()
                                   for i in range(len(real))])),
    }


def vlm_probability(folder, image: np.ndarray, question: str, forms) -> float:
    """A judge's answer, from the VLM alone (Lin et al. 2024; GenEval 2's evaluation.py): its
    chat template around one image and the question, one forward, the softmax over the
    vocabulary at the last position, summed over the first token of each answer form (each
    token once)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.fromarray(image)], text=[text], return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].double(), dim=-1)
    tokenizer = processor.tokenizer
    ids = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(form)[0]) for form in forms}
    return float(sum(probs[i] for i in ids))
