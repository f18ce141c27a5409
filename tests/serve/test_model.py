"""The model replica's containment of failures, in-process (no Ray): an error on one row is
that row's, whatever raised it. End to end, over Serve: tests/serve/test_endpoint.py."""

from __future__ import annotations

import numpy as np

from darkroom.platform.data.records import encode_png
from darkroom.serve.model import ImageModel, contained


def test_an_error_fails_only_the_items_that_cause_it():
    """"²" is a digit to str.isdigit, and int() refuses it: among 16 items it fails alone, in
    a few calls rather than one per item."""
    calls = []

    def parse(items: list[str]) -> list[int]:
        calls.append(len(items))
        return [int(item) for item in items]

    items = [str(i) for i in range(16)]
    items[5] = "²"
    out = contained(parse, items, lambda item, err: type(err).__name__)
    assert out == [*range(5), "ValueError", *range(6, 16)]
    assert len(calls) <= 1 + 2 * 4  # each split level: the half that fails, and its sibling
    # when everything fails, every item says so
    assert contained(lambda items: 1 / 0, ["a", "b", "c"], lambda item, err: item) == [
        "a", "b", "c"]


def test_an_image_the_safety_checker_fails_on_is_withheld_alone():
    """A corrupt image among good ones: the checker cannot read it, so that image's answer is a
    500 and it is withheld; the others are checked and answered as usual."""
    from darkroom.evals.scorers.safety import load_safety_checker

    model = object.__new__(ImageModel.func_or_class)  # only the checker: no pipeline to load
    model.checker = load_safety_checker("nudenet")
    good = encode_png(np.full((64, 64, 3), 128, np.uint8))
    rows = [{"image": good, "error": None, "seed": i, "width": 64, "height": 64,
             "batch_size": 3} for i in range(3)]
    rows[1] = {**rows[1], "image": b"\x89PNG not really"}
    answers = model._check(rows)
    assert [a["status"] if a["error"] else None for a in answers] == [None, 500, None]
    assert answers[1]["image"] is None
    assert [a["image"] for a in answers[::2]] == [good, good]
    assert all(0.0 <= a["safety_score"] <= 1.0 for a in answers[::2])
