"""The judge's local path on a tiny random-init Qwen2-VL saved to a folder and loaded the real
way: probabilities read from the logits, batched, checked against the model run one question at
a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darkroom.evals.scorers.judge import JudgeSpec, Query, check, identity, load_judge
from darkroom.evals.scorers.judge_local import LocalJudge
from darkroom.evals.units import WeightsMissing


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random images of different sizes (so a batch is padded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)
            for i in range(count)]


def next_token_distribution(folder, image: np.ndarray, question: str) -> np.ndarray:
    """The model alone: its chat template around one image and question, one forward, the
    softmax of the last position's logits over the vocabulary."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[Image.fromarray(image)], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
    return torch.softmax(logits, dim=-1).numpy()


def test_probabilities_are_the_answer_tokens_share_of_the_next_token(tiny_vlm_dir):
    """A batch of questions of different lengths on images of different sizes, two at a time,
    gives for each the probability the model alone gives its answer's first token; the forms
    of an answer add up, each token once."""
    from transformers import AutoTokenizer

    judge = LocalJudge(JudgeSpec(model=str(tiny_vlm_dir), batch_size=2))
    questions = ["Is there a cat?", "How many dogs are in the image? Answer in one word.",
                 "Is the sky blue?", "Does this figure show \"a red fox\"?", "Red?"]
    answers = [("Yes",), ("two", "2", " two"), ("Yes", "yes", " yes", "Yes"), ("No",), ("Yes",)]
    queries = [Query(image, q, a) for image, q, a in zip(images(5), questions, answers,
                                                          strict=True)]
    got = [v.probability for v in judge.judge(queries)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm_dir)
    for query, value in zip(queries, got, strict=True):
        dist = next_token_distribution(tiny_vlm_dir, query.image, query.question)
        ids = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(form)[0])
               for form in query.answers}
        assert value == pytest.approx(sum(dist[i] for i in ids), abs=1e-6)
    assert len(set(np.round(got, 6))) == len(got)  # the tiny model tells them apart
    # alone or in a batch, a question gets the same probability
    alone = LocalJudge(JudgeSpec(model=str(tiny_vlm_dir), batch_size=1)).judge(queries[1:2])
    assert alone[0].probability == pytest.approx(got[1], abs=1e-6)


def test_a_judge_is_loaded_once_per_process(tiny_vlm_dir):
    spec = {"model": str(tiny_vlm_dir)}
    assert load_judge(spec) is load_judge(JudgeSpec(**spec))


def test_a_folder_without_a_model_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "has no config.json" in check(JudgeSpec(model=str(tmp_path)))
    with pytest.raises(WeightsMissing, match="has no config.json"):
        LocalJudge(JudgeSpec(model=str(tmp_path)))
    with pytest.raises(WeightsMissing, match="judge.endpoint"):
        LocalJudge(JudgeSpec(model="no-such-org/no-such-vlm"))


def test_the_identity_changes_with_the_judges_files(tiny_vlm_dir, tmp_path):
    import shutil

    copy = tmp_path / "vlm"
    shutil.copytree(tiny_vlm_dir, copy)
    before = identity(JudgeSpec(model=str(copy)))
    assert identity(JudgeSpec(model=str(copy))) == before
    (copy / "chat_template.jinja").write_text("{{ messages }}")
    assert identity(JudgeSpec(model=str(copy))) != before
    remote = identity(JudgeSpec(model="qwen", endpoint="http://127.0.0.1:1/v1"))
    assert remote["path"] == "remote" and remote != before
