"""The edit metrics against independent computations: PSNR and SSIM outside the mask written
from their definitions (Wang et al. 2004, with the Gaussian window summed pixel by pixel), CLIP
directional and image similarity from the model's own embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darkroom.evals.registry import metrics
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.units import PlannedPart
from darkroom.platform.data.records import encode_png

SIZE = 24


def ssim_oracle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM's map written out: an explicit 11 x 11 Gaussian (sigma 1.5) window, the image
    mirrored at its edges, every window summed by hand."""
    radius, sigma = 5, 1.5
    grid = np.arange(-radius, radius + 1)
    g = np.exp(-(grid**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w, channels = a.shape
    out = np.zeros((h, w))
    pad = [(radius, radius), (radius, radius), (0, 0)]
    pa_, pb = np.pad(a.astype(float), pad, mode="symmetric"), np.pad(b.astype(float), pad,
                                                                       mode="symmetric")
    for y in range(h):
        for x in range(w):
            total = 0.0
            for c in range(channels):
                wa = pa_[y:y + 2 * radius + 1, x:x + 2 * radius + 1, c]
                wb = pb[y:y + 2 * radius + 1, x:x + 2 * radius + 1, c]
                ma, mb = (window * wa).sum(), (window * wb).sum()
                va = (window * wa * wa).sum() - ma**2
                vb = (window * wb * wb).sum() - mb**2
                cov = (window * wa * wb).sum() - ma * mb
                total += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1)
                                                                   * (va + vb + c2))
            out[y, x] = total / channels
    return out


@pytest.fixture
def edits(tmp_path):
    """Two edits of sources on disk: one inpainting (with a mask), one instruction edit."""
    rng = np.random.default_rng(3)
    rows = []
    for i, masked in enumerate((True, False)):
        source = rng.integers(0, 255, (SIZE, SIZE, 3), np.uint8)
        mask = np.zeros((SIZE, SIZE, 3), np.uint8)
        mask[6:18, 4:14] = 255
        edit = source.astype(int)
        edit[6:18, 4:14] = rng.integers(0, 255, (12, 10, 3))  # repainted
        edit += rng.integers(-6, 7, edit.shape)  # and a little everywhere, through a VAE
        edit = np.clip(edit, 0, 255).astype(np.uint8)
        (tmp_path / f"s{i}.png").write_bytes(encode_png(source))
        (tmp_path / f"m{i}.png").write_bytes(encode_png(mask))
        inputs = [{"role": "image", "path": str(tmp_path / f"s{i}.png"), "sha256": "-"}]
        if masked:
            inputs.append({"role": "mask", "path": str(tmp_path / f"m{i}.png"), "sha256": "-"})
        rows.append((edit, source, mask[..., 0] < 128 if masked else np.ones((SIZE, SIZE), bool),
                     json.dumps(inputs)))
    return rows


def test_psnr_and_ssim_outside_the_mask_match_their_definitions(edits):
    part = build_part(PlannedPart(scorer="preservation"))
    images = [edit for edit, *_ in edits] + [edits[0][0]]
    batch = {"input_images": np.array([r for *_, r in edits] + [None], dtype=object),
             "prompt": np.array(["x"] * 3, dtype=object)}
    out = part(images, batch)
    for i, (edit, source, keep, _) in enumerate(edits):
        mse = np.mean((edit.astype(float) - source.astype(float))[keep] ** 2)
        assert out["edit_psnr"][i] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-6)
        assert out["edit_ssim"][i] == pytest.approx(ssim_oracle(edit, source)[keep].mean(),
                                                    abs=1e-6)
    assert np.isnan(out["edit_psnr"][2]) and np.isnan(out["edit_ssim"][2])  # not an edit


def test_clip_direction_and_image_similarity_match_the_embeddings(edits, tiny_clip_dir):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    part = build_part(PlannedPart(scorer="clip_direction", weights=str(tiny_clip_dir)))
    prompts = ["a red door", "make it winter"]
    batch = {"input_images": np.array([r for *_, r in edits], dtype=object),
             "prompt": np.array(prompts, dtype=object)}
    out = part([edit for edit, *_ in edits], batch)
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)

    def image(x):
        with torch.no_grad():
            pixels = processor(images=[x], return_tensors="pt").pixel_values
            emb = model.get_image_features(pixel_values=pixels)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        return emb[0].double().numpy()

    def text(words):
        tokens = processor.tokenizer([words], padding=True, return_tensors="pt")
        with torch.no_grad():
            emb = model.get_text_features(input_ids=tokens.input_ids,
                                          attention_mask=tokens.attention_mask)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        return emb[0].double().numpy()

    def cosine(u, v):
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    for i, (edit, source, _, _) in enumerate(edits):
        change = image(edit) - image(source)
        assert out["clip_direction"][i] == pytest.approx(
            cosine(change, text(prompts[i]) - text("")), abs=1e-6)
        assert out["clip_image_similarity"][i] == pytest.approx(
            cosine(image(edit), image(source)), abs=1e-6)


def test_the_edit_metrics_are_registered_with_their_direction():
    found = metrics()
    for name in ("edit_psnr", "edit_ssim", "clip_direction", "clip_image_similarity"):
        assert found[name].higher_is_better
