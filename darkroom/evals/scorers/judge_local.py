"""The judge's local path: a transformers image-text-to-text model (`AutoModelForImageTextToText`
and its processor's chat template) on the scoring actors, batched; the probability of an answer
read from the softmax of the logits at the last prompt position."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.evals.scorers.judge_spec import JudgeSpec, Query, Verdict, check
from darkroom.evals.units import WeightsMissing
from darkroom.platform.models.names import looks_local


def answer_token_ids(tokenizer: Any, forms: Sequence[str]) -> tuple[int, ...]:
    """The first token of each answer form, each once (GenEval 2 reads `encode(form)[0]`)."""
    ids = []
    for form in forms:
        encoded = tokenizer.encode(form, add_special_tokens=False)
        if encoded and encoded[0] not in ids:
            ids.append(encoded[0])
    return tuple(ids)


def messages(question: str, image: Any) -> list[dict[str, Any]]:
    """The chat of one question: a user turn with the image, then the question."""
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": question}]}]


DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class LocalJudge:
    """A transformers image-text-to-text model and its processor, run here (one per process:
    `load_judge`)."""

    def __init__(self, spec: JudgeSpec, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.spec, self.device = spec, device
        name = str(Path(spec.model).expanduser()) if looks_local(spec.model) else spec.model
        reason = check(spec)
        if reason:
            raise WeightsMissing(reason)
        dtype = "auto" if spec.dtype == "auto" else getattr(torch, DTYPES[spec.dtype])
        try:
            self.model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype).eval()
            self.processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise WeightsMissing(
                f"judge `{spec.model}` could not be loaded ({str(err).splitlines()[0][:200]}); "
                "download it where there is network (`hf download ...`) and give its folder as "
                "`judge.model`, or serve it and give `judge.endpoint`") from err
        self.model.to(device)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "right"  # real tokens keep their positions
        self.chat = getattr(self.processor, "chat_template", None) is not None

    def prompt(self, question: str) -> str:
        """The text the model reads: its chat template around the image and question, up to
        the assistant's first token (no chat template, as PaliGemma: the question alone)."""
        if not self.chat:
            return question
        return self.processor.apply_chat_template(messages(question, None),
                                                  add_generation_prompt=True, tokenize=False)

    def judge(self, queries: Sequence[Query]) -> list[Verdict]:
        """The probability of each query's answer, in batches of `batch_size`."""
        out: list[Verdict] = []
        for start in range(0, len(queries), self.spec.batch_size):
            chunk = queries[start:start + self.spec.batch_size]
            probs = self.next_token_probabilities(chunk)
            for query, row in zip(chunk, probs, strict=True):
                ids = list(answer_token_ids(self.tokenizer, query.answers))
                out.append(Verdict(float(row[ids].sum()) if ids else 0.0))
        return out

    def next_token_probabilities(self, queries: Sequence[Query]) -> np.ndarray:
        """softmax over the vocabulary at the last prompt position, one row per query."""
        import torch
        from PIL import Image

        images = [Image.fromarray(np.asarray(q.image, np.uint8)) for q in queries]
        inputs = self.processor(images=images, text=[self.prompt(q.question) for q in queries],
                                padding=True, return_tensors="pt").to(self.device)
        mask = inputs["attention_mask"]
        last = mask.sum(dim=1) - 1
        with torch.inference_mode():
            try:  # only the positions read are projected onto the vocabulary
                logits = self.model(**inputs, logits_to_keep=last[:, None]).logits[:, 0]
            except TypeError:  # a model without logits_to_keep: count back from the end
                logits = self.model(**inputs).logits
                padding = mask.shape[1] - mask.sum(dim=1)
                rows = torch.arange(len(queries), device=logits.device)
                logits = logits[rows, logits.shape[1] - 1 - padding.to(logits.device)]
        return logits.float().softmax(dim=-1).cpu().numpy().astype(np.float64)
