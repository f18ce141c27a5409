"""The benchmark suite's gpu code path, run at tiny scale on CPU, and the full-size configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from darkroom.platform.families import fullsize_families
from darkroom.platform.models.builds import build_fullsize

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_smoke_writes_json_and_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--suite", "gpu", "--smoke", "--rounds", "1",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu-smoke.json").read_text())["results"]
    assert [r["model"] for r in results] == ["tiny:sd", "tiny:sdxl", "tiny:dit", "tiny:controlnet",
                                             "tiny:sd3", "tiny:flux"]
    for r in results:
        assert r["plain_images_per_s"] > 0 and r["darkroom_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["darkroom_images_per_s"] / r["plain_images_per_s"])
        assert r["flops_per_image_step"] > 0
    assert "| tiny DiT |" in (tmp_path / "gpu-smoke.md").read_text()


@pytest.mark.parametrize(
    ("name", "millions"),
    # published parameter counts of the denoisers (DiT: diffusers' per-block embedders included;
    # SD 3.5 Medium's model card rounds its 2.24B MMDiT-X up to "2.5B", Large's 8.06B to "8.1B",
    # FLUX.1-dev's 11.90B to "12B")
    [("sd15", 859.5), ("sdxl", 2567.5), ("dit-xl-2", 749.8), ("sd15-controlnet", 859.5),
     ("sd35-medium", 2243.2), ("sd35-large", 8056.6), ("flux-dev", 11901.4)],
)
def test_fullsize_configs_match_published_sizes(name, millions):
    pipe = build_fullsize(name, "meta", torch.float16)  # no memory is allocated on meta
    net = getattr(pipe, "unet", None) or pipe.transformer
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    assert net.dtype == torch.float16
    if hasattr(pipe.scheduler, "betas"):
        assert pipe.scheduler.betas.dtype == torch.float32  # schedules stay in full precision
    t5 = getattr(pipe, "text_encoder_3", None) or getattr(pipe, "text_encoder_2", None)
    if type(t5).__name__ == "T5EncoderModel":  # T5 v1.1 XXL's encoder: 4.76B
        assert sum(p.numel() for p in t5.parameters()) / 1e6 == pytest.approx(4762.3, abs=0.1)
    assert fullsize_families()[name] in ("sd", "sdxl", "dit", "controlnet", "sd3", "flux")
