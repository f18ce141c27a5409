"""Screenshots of the rating page and the results page for docs/arena.md.

    .venv/bin/python docs/arena_screenshots.py     # docs/images/arena_rating.png, arena_results.png

A real round over three runs of the bundled digits LDM (generated here on the CPU, no
downloads), served by `darkroom arena` and driven in headless Chromium (Debian's chromium). The
votes come from three scripted raters that prefer the image the bundled digits classifier is
surer shows the digit asked for, with some noise: a stand-in for people, so that the results page
has numbers to show.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
RUNS = {"ddpm-10": ("ddpm", 10, 1.5), "dpmpp_2m-25": ("dpmpp_2m", 25, 1.5),
        "ddim-25-g4": ("ddim", 25, 4.0)}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGES_PER_PROMPT = 3


def generate(job_dir: Path) -> None:
    """The three runs, as `darkroom run` lays them out."""
    from darkroom.platform.data import layout
    from darkroom.platform.data.records import IMAGE_COLUMNS, IMAGE_SCHEMA
    from darkroom.platform.engine.generator import ImageGenerator

    for run_id, (sampler, steps, guidance) in RUNS.items():
        generator = ImageGenerator({"model": "builtin:digits-ldm"}, {"name": sampler},
                                   defaults={"steps": steps})
        rows = [{"job_id": job_dir.name, "run_id": run_id, "row_id": f"d{d}-{k}",
                 "prompt_id": f"d{d}", "sample_idx": k, "seed": 100 * d + k,
                 "prompt": f"a handwritten digit {DIGITS[d]}", "class_label": d,
                 "guidance_scale": guidance} for d in range(10)
                for k in range(IMAGES_PER_PROMPT)]
        made = generator.generate(rows)
        run_dir = job_dir / run_id
        (run_dir / layout.IMAGES).mkdir(parents=True)
        path = run_dir / layout.IMAGES / "part-0.parquet"
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in IMAGE_COLUMNS} for r in made],
                                            schema=IMAGE_SCHEMA), path)
        layout.commit(path, {"rows": len(made)})
        info = {"run_id": run_id, "job": job_dir.name, "format": layout.FORMAT,
                "model": generator.spec.model_dump(), "model_label": "digits-ldm",
                "sampler": {"name": sampler, "overrides": {}}, "steps": steps,
                "guidance_scale": guidance, "seed": 0, "images_per_prompt": IMAGES_PER_PROMPT,
                "prompt_count": 10}
        (run_dir / layout.RUN_INFO).write_text(json.dumps(info))
    (job_dir / layout.JOB_SPEC).write_text(f"name: {job_dir.name}\n")


def confidence():
    """png bytes, digit -> the digits classifier's log-odds that the image shows it."""
    import torch

    from darkroom.platform.zoo.classifier import load_digits_classifier

    model = load_digits_classifier()

    def score(png: bytes, digit: int) -> float:
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255.0
        with torch.no_grad():
            logits = model(torch.from_numpy(pixels).permute(2, 0, 1)[None])
        logp = torch.log_softmax(logits, 1)[0]
        return float(logp[digit] - torch.logsumexp(torch.cat([logp[:digit], logp[digit + 1:]]),
                                                   0))

    return score


def start(job_dir: Path, store: str) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """`darkroom arena` on a free port; its process, base URL and tokens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "darkroom", "arena", str(job_dir), "--store", store, "--raters",
         "ann,ben,cho,dee", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    tokens, base = {}, ""
    for line in process.stdout:
        found = re.match(r"^\s+\w+ (\S+): (http://\S+)/login\?token=(\w+)$", line.rstrip())
        if found:
            tokens[found.group(1)], base = found.group(3), found.group(2)
        if line.startswith("serving at"):
            return process, base, tokens
    raise RuntimeError("darkroom arena did not start")


def vote(base: str, tokens: dict[str, str], score, votes_each: int = 70) -> None:
    """Scripted raters: the image the classifier is surer of (by log-odds, with noise of their
    own), a tie when the two are close, both bad when neither looks like the digit."""
    rng = np.random.default_rng(0)
    for rater in ("ann", "ben", "cho", "dee"):
        headers = {"Authorization": f"Bearer {tokens[rater]}"}
        with httpx.Client(base_url=base, headers=headers) as client:
            for _ in range(votes_each):
                shown = client.get("/api/next").json()
                digit = DIGITS.index(shown["prompt"].rsplit(" ", 1)[1])
                left, right = (score(client.get(shown["images"][s]).content, digit)
                               + rng.normal(0.0, 1.5) for s in ("left", "right"))
                if max(left, right) < 0.0:
                    answer = "both_bad"
                elif abs(left - right) < 0.5:
                    answer = "tie"
                else:
                    answer = "left" if left > right else "right"
                client.post("/api/vote", json={"ticket": shown["ticket"],
                                               "question": "overall", "answer": answer})


def shoot(base: str, tokens: dict[str, str]) -> None:
    """The rating page (as a rater) and the results page (as the viewer)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(f"{base}/login?token={tokens['ann']}")
        page.wait_for_function("document.getElementById('right').naturalWidth > 0")
        page.screenshot(path=str(OUT / "arena_rating.png"))
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{base}/login?token={tokens['owner']}")
        page.screenshot(path=str(OUT / "arena_results.png"), full_page=True)
        browser.close()
    for name in ("arena_rating.png", "arena_results.png"):  # few colours: small files
        image = Image.open(OUT / name).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(OUT / name,
                                                                        optimize=True)
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size // 1024} KiB)")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="darkroom-arena-") as folder:
        job_dir = Path(folder) / "digits-round"
        generate(job_dir)
        process, base, tokens = start(job_dir, f"sqlite:///{folder}/votes.sqlite")
        try:
            vote(base, tokens, confidence())
            shoot(base, tokens)
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()
