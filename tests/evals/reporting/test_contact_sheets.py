"""Contact sheets: which images a run's sheet shows."""

from __future__ import annotations


def test_contact_sheet_spreads_over_prompts():
    from darkroom.evals.reporting.contact_sheets import spread

    prompt_ids = [f"p{i // 3:02d}" for i in range(60)]  # 20 prompts, 3 images each
    samples = [i % 3 for i in range(60)]
    picked = spread(prompt_ids, samples, 8)
    assert len({prompt_ids[i] for i in picked}) == 8 and all(samples[i] == 0 for i in picked)
    assert prompt_ids[picked[0]] == "p00" and prompt_ids[picked[-1]] == "p19"
    few = spread(prompt_ids[:9], samples[:9], 8)  # 3 prompts: every first image, then seconds
    assert [prompt_ids[i] for i in few[:3]] == ["p00", "p01", "p02"] and len(few) == 8
