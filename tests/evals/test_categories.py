"""The prompt categories of per-category FID, read back from the job's prompt file."""

from __future__ import annotations

import json


def test_categories_use_the_jobs_prompt_ids(tmp_path):
    """The category of each prompt id, read back from the prompt file as the jobs read it."""
    from darkroom.evals.categories import prompt_categories
    from darkroom.jobs.prompts import load_prompts
    from darkroom.jobs.spec import PromptSource

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"key": "k9", "prompt": "a cat", "category": "animals"},
        {"key": "k3", "prompt": "a car", "category": "vehicles"}]) + "\n\n")
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,category\na cat,animals\na tree,\na car,vehicles\n")
    for file, columns in ((jsonl, {"id": "key"}), (csv, {})):
        prompts = load_prompts(PromptSource.model_validate({"file": str(file),
                                                            "columns": columns}))
        found, reason = prompt_categories({"prompts": {"file": str(file), "columns": columns}})
        assert reason == ""
        texts = {p.prompt_id: p.prompt for p in prompts}
        assert {texts[i]: c for i, c in found.items()} == {"a cat": "animals",
                                                           "a car": "vehicles"}
    (tmp_path / "plain.jsonl").write_text('{"prompt": "a cat"}\n')
    assert "plain.jsonl has no `category` column" in prompt_categories(
        {"prompts": {"file": str(tmp_path / "plain.jsonl")}})[1]
    assert "x.txt has no columns" in prompt_categories(
        {"prompts": {"file": str(tmp_path / "x.txt")}})[1]
    assert "do not come from a file" in prompt_categories({"prompts": {"classes": [1]}})[1]
