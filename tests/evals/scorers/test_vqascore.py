"""VQAScore through its registered part on the tiny random-init Qwen2-VL (saved and loaded the
real way), checked against the probability of "Yes" read here from the model's logits; the
metric's mean, interval and missing cases; the per-row cache on real actors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from darkroom.evals import registry
from darkroom.evals.metrics.base import Context, RunScores
from darkroom.evals.metrics.compute import statistics, with_intervals
from darkroom.evals.score_cache import PREFIX
from darkroom.evals.scorers.actor import build_part
from darkroom.evals.scorers.plan import plan_parts
from darkroom.evals.spec import EvalSpec
from darkroom.evals.units import Part
from darkroom.platform.data import layout

QUESTION = 'Does this figure show "{}"? Please answer Yes or No.'


def p_yes(folder, image: np.ndarray, question: str, answers=("Yes",)) -> float:
    """Lin et al. 2024: softmax over the vocabulary of the logits after the chat prompt (user:
    the image, the question; then the assistant's turn), at the answer's first token."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.fromarray(image)], text=[text], return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, -1].double(), dim=-1)
    ids = {processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.tokenize(a)[0])
           for a in answers}
    return float(sum(probs[i] for i in ids))


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (56, 56 + 8 * (i % 2), 3), dtype=np.uint8)
            for i in range(count)]


def test_vqascore_is_the_probability_of_yes_from_the_logits(tiny_vlm_dir):
    prompts = ["a red fox", "two cats on a sofa, one asleep", "", "an old map"]
    pictures = images(4)
    spec = EvalSpec(metrics=["vqascore"], judge={"model": str(tiny_vlm_dir), "batch_size": 3})
    plan, skipped = plan_parts(spec)
    assert skipped == {} and plan.keys() == [Part("vqascore")]
    out = build_part(plan.parts[0])(pictures, {"prompt": np.array(prompts, dtype=object)})
    for i in (0, 1, 3):
        expected = p_yes(tiny_vlm_dir, pictures[i], QUESTION.format(prompts[i]))
        assert out["vqascore"][i] == pytest.approx(expected, abs=1e-6)
        assert out["vqascore_error"][i] == ""
    assert np.isnan(out["vqascore"][2])  # no prompt, nothing asked

    # the question and the answer forms are settings
    custom = EvalSpec(metrics=["vqascore"], judge={"model": str(tiny_vlm_dir)},
                      vqascore={"question": "Is this {}? Answer in one word.",
                                "answers": ["Yes", "yes", " yes"]})
    part = build_part(plan_parts(custom)[0].parts[0])
    got = part(pictures[:1], {"prompt": np.array(prompts[:1], dtype=object)})["vqascore"][0]
    assert got == pytest.approx(p_yes(tiny_vlm_dir, pictures[0],
                                      "Is this a red fox? Answer in one word.",
                                      ("Yes", "yes", " yes")), abs=1e-6)
    assert part([], {"prompt": np.array([], dtype=object)})["vqascore"].shape == (0,)


def test_the_metric_is_the_mean_with_an_interval_or_missing_with_the_reason():
    values = np.array([0.2, 0.4, 0.9, 0.5, 0.7, 0.1])
    columns = {"row_id": np.array([f"{i}" for i in range(6)], dtype=object),
               "prompt_id": np.array(["0", "0", "1", "1", "2", "2"], dtype=object),
               "prompt": np.array(["a", "a", "b", "b", "c", "c"], dtype=object),
               "vqascore": values, "vqascore_error": np.array([""] * 6, dtype=object)}
    spec = EvalSpec(metrics=["vqascore"])
    stats, missing = statistics(RunScores("r", columns), Context(spec), ["vqascore"])
    assert missing == {} and stats["vqascore"].value == pytest.approx(values.mean(), abs=1e-12)
    counts = RunScores("r", columns).counts(200, 0)
    shown = with_intervals(stats, counts, 0.95)
    means = (counts @ values) / counts.sum(axis=1)  # the prompts drawn with their images
    assert shown["vqascore_ci_low"] == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
    assert registry.metrics()["vqascore"].higher_is_better

    failed = {**columns, "vqascore": np.where(np.arange(6) == 3, np.nan, values),
              "vqascore_error": np.array(["", "", "", "http://judge/v1: HTTP 503", "", ""],
                                         dtype=object)}
    _, missing = statistics(RunScores("r", failed), Context(spec), ["vqascore"])
    assert "1 of 6 image(s) could not be judged (http://judge/v1: HTTP 503)" in missing[
        "vqascore"]
    blank = {**columns, "prompt": np.array([""] * 6, dtype=object)}
    assert "no prompts" in statistics(RunScores("r", blank), Context(spec),
                                      ["vqascore"])[1]["vqascore"]


def test_a_judge_folder_without_a_model_is_missing_before_any_image_is_read(tmp_path):
    spec = EvalSpec(metrics=["vqascore"], judge={"model": str(tmp_path)})
    plan, skipped = plan_parts(spec)
    assert plan.parts == () and "has no config.json" in skipped["vqascore"]
    with pytest.raises(ValueError, match="must hold `{}`"):
        EvalSpec(metrics=["vqascore"], vqascore={"question": "Is it the prompt?"})


def test_scores_are_cached_per_row_judge_and_template(ray_session, make_run, tiny_vlm_dir,
                                                      tmp_path):
    """On real actors: a second evaluation takes a row's score from the cache (a value
    planted there comes back), asks the judge again for a row missing from it or NaN in it,
    and another template is judged anew."""
    from darkroom.evals.runner import evaluate_runs

    run_dir = make_run(tmp_path / "job", "run-a", prompts=["a red fox", "an old map"],
                       images_per_prompt=2)
    spec = EvalSpec(metrics=["vqascore"], judge={"model": str(tiny_vlm_dir)}, batch_size=4,
                    bootstrap={"resamples": 50})
    first = evaluate_runs([run_dir], spec)[0][0]
    scores = pq.read_table(run_dir / layout.SCORES / "scores.parquet").to_pydict()
    pictures = {}
    for table in (pq.read_table(f) for f in sorted((run_dir / layout.IMAGES).glob("*.parquet"))):
        for row, png, prompt in zip(*(table.column(c).to_pylist() for c in (
                "row_id", "image", "prompt")), strict=True):
            pictures[row] = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), prompt)
    truth = {row: p_yes(tiny_vlm_dir, image, QUESTION.format(prompt))
             for row, (image, prompt) in pictures.items()}
    assert scores["vqascore"] == pytest.approx([truth[r] for r in scores["row_id"]], abs=1e-6)
    # the metric is exactly the mean of the per-row scores; those match the model alone to
    # 1e-6 (batched float32 forwards differ from one-image ones in the last digits)
    assert first.metrics["vqascore"] == pytest.approx(np.mean(scores["vqascore"]), abs=1e-9)
    assert first.metrics["vqascore"] == pytest.approx(np.mean(list(truth.values())), abs=1e-6)

    # plant a value for row 0, drop row 1, make row 2 NaN: only rows 1 and 2 are asked again
    cache = next((run_dir / layout.SCORES).glob(f"{PREFIX}vqascore-*.parquet"))
    table = pq.read_table(cache)
    planted = table.column("vqascore").to_pylist()
    planted[0], planted[2] = 0.123456, float("nan")
    kept = table.set_column(table.column_names.index("vqascore"), "vqascore",
                            pa.array(planted)).take([0, 2, 3])
    pq.write_table(kept.replace_schema_metadata(table.schema.metadata), cache)
    evaluate_runs([run_dir], spec)
    again = pq.read_table(run_dir / layout.SCORES / "scores.parquet").to_pydict()
    rows = again["row_id"]
    assert again["vqascore"][0] == pytest.approx(0.123456)
    assert again["vqascore"][1:] == pytest.approx([truth[r] for r in rows[1:]], abs=1e-6)

    other = EvalSpec.model_validate({**spec.model_dump(), "vqascore": {"question": "Is this {}?"}})
    evaluate_runs([run_dir], other)
    assert len(list((run_dir / layout.SCORES).glob(f"{PREFIX}vqascore-*.parquet"))) == 2
    judged = pq.read_table(run_dir / layout.SCORES / "scores.parquet").to_pydict()
    image, prompt = pictures[rows[0]]
    assert judged["vqascore"][0] == pytest.approx(
        p_yes(tiny_vlm_dir, image, f"Is this {prompt}?"), abs=1e-6)
