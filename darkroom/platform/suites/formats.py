"""Readers of the suites' files, each in the format its authors publish: GenEval's and GenEval
2's JSONL, PartiPrompts' TSV, DPG-Bench's CSV of questions, T2I-CompBench's text files, the
GenAI-Bench JSON pair, DrawBench's CSV and COCO's caption annotations. Each takes the files by
name and gives the prompts in the suite's own order; a row that cannot be read is a ValueError
naming the file and the row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from darkroom.platform.suites.items import Question, SuiteItem

COCO_COUNT, COCO_SEED = 30_000, 0


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig")


def _jsonl(name: str, data: bytes) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_text(data).splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"line {number} of {name} is not JSON: {err}") from None
    return rows


def _field(row: Mapping[str, Any], key: str, name: str, where: str) -> Any:
    if key not in row:
        raise ValueError(f"{where} of {name} has no `{key}` (it has {', '.join(row)})")
    return row[key]


def geneval(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """GenEval (Ghosh et al. 2023) `evaluation_metadata.jsonl`: tag, include, exclude, prompt."""
    items = []
    for name, data in files.items():
        for number, row in enumerate(_jsonl(name, data), start=1):
            where = f"line {number}"
            tag = _field(row, "tag", name, where)
            items.append(SuiteItem(
                _field(row, "prompt", name, where), (tag,),
                checks={"tag": tag, "include": list(_field(row, "include", name, where)),
                        "exclude": list(row.get("exclude") or [])}))
    return items


def geneval2(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """GenEval 2 `geneval2_data.jsonl`: prompt, atom_count, vqa_list ([question, answer]),
    skills (one per question)."""
    items = []
    for name, data in files.items():
        for number, row in enumerate(_jsonl(name, data), start=1):
            where = f"line {number}"
            pairs, skills = _field(row, "vqa_list", name, where), _field(row, "skills", name,
                                                                         where)
            if len(pairs) != len(skills):
                raise ValueError(f"{where} of {name}: {len(pairs)} questions but "
                                 f"{len(skills)} skills")
            questions = tuple(Question(q, a, s, str(i))
                              for i, ((q, a), s) in enumerate(zip(pairs, skills, strict=True)))
            items.append(SuiteItem(_field(row, "prompt", name, where), (), questions,
                                   metadata={"atom_count": row.get("atom_count")}))
    return items


def parti(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """PartiPrompts (Yu et al. 2022) `PartiPrompts.tsv`: Prompt, Category, Challenge, Note."""
    items = []
    for name, data in files.items():
        for number, row in enumerate(csv.DictReader(io.StringIO(_text(data)), delimiter="\t"),
                                     start=2):
            where = f"line {number}"
            items.append(SuiteItem(_field(row, "Prompt", name, where),
                                   (_field(row, "Category", name, where),),
                                   metadata={"challenge": row.get("Challenge"),
                                             "note": row.get("Note")}))
    return items


def _dpg_skill(row: Mapping[str, str]) -> str:
    """DPG-Bench's level-1 category, as its compute_dpg_bench.py reads it from the tuple
    (`entity - whole (dog)` -> `entity`)."""
    return (row.get("tuple") or "").split("(")[0].split("-")[0].strip() or row.get(
        "category_broad", "")


def dpg(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """DPG-Bench (Hu et al. 2024, ELLA) `dpg_bench.csv`: one row per question (item_id, text,
    proposition_id, dependency, category_broad, tuple, question_natural_language), grouped into
    prompts by item_id; dependency `0` means none (DSG)."""
    prompts: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        for number, row in enumerate(csv.DictReader(io.StringIO(_text(data))), start=2):
            where = f"line {number}"
            item = str(_field(row, "item_id", name, where))
            parents = tuple(p.strip() for p in str(_field(row, "dependency", name, where))
                            .split(",") if p.strip() and p.strip() != "0")
            question = Question(_field(row, "question_natural_language", name, where), "yes",
                                _dpg_skill(row), str(_field(row, "proposition_id", name,
                                                            where)).strip(), parents)
            entry = prompts.setdefault(item, {"prompt": _field(row, "text", name, where),
                                              "questions": []})
            entry["questions"].append(question)
    return [SuiteItem(p["prompt"], (), tuple(p["questions"]), metadata={"item_id": item})
            for item, p in prompts.items()]


def t2i_compbench(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """T2I-CompBench (Huang et al. 2023) validation files, one prompt a line; the category is
    the file's name (`color_val.txt` -> color)."""
    items = []
    for name, data in files.items():
        category = name.rsplit("/", 1)[-1].removesuffix(".txt").removesuffix("_val")
        items += [SuiteItem(line.strip(), (category,)) for line in _text(data).splitlines()
                  if line.strip()]
    return items


def genai_bench(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """GenAI-Bench (Li et al. 2024): `genai_image.json` ({"00000": {prompt, ...}}) and
    `genai_skills.json` ({skill: [prompt numbers]}); a prompt has every skill that lists it."""
    try:
        prompts = json.loads(_text(files["genai_image.json"]))
        skills = json.loads(_text(files["genai_skills.json"]))
    except KeyError as err:
        raise ValueError(f"GenAI-Bench needs {err.args[0]} beside the other file") from None
    tags: dict[int, list[str]] = {}
    for skill, numbers in skills.items():
        for number in numbers:
            tags.setdefault(int(number), []).append(skill)
    return [SuiteItem(prompts[key]["prompt"], tuple(tags.get(int(key), ())))
            for key in sorted(prompts, key=int)]


def drawbench(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """DrawBench (Saharia et al. 2022): a CSV with Prompts and Category."""
    items = []
    for name, data in files.items():
        for number, row in enumerate(csv.DictReader(io.StringIO(_text(data))), start=2):
            where = f"line {number}"
            items.append(SuiteItem(_field(row, "Prompts", name, where),
                                   (_field(row, "Category", name, where),)))
    return items


def coco_captions(files: Mapping[str, bytes]) -> list[SuiteItem]:
    """COCO 2014 validation captions (`captions_val2014.json`) as the FID-30k protocol uses
    them: each image's first caption (by annotation id), 30,000 images drawn without
    replacement with a fixed seed."""
    import numpy as np

    data = json.loads(_text(next(iter(files.values()))))
    first: dict[int, dict[str, Any]] = {}
    for note in sorted(data["annotations"], key=lambda a: a["id"]):
        first.setdefault(note["image_id"], note)
    images = sorted(first)
    count = min(COCO_COUNT, len(images))
    drawn = np.random.default_rng(COCO_SEED).choice(len(images), size=count, replace=False)
    return [SuiteItem(first[images[i]]["caption"].strip(),
                      metadata={"image_id": images[i]}) for i in sorted(drawn)]
