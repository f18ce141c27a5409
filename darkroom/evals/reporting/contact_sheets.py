"""Contact sheets: a grid of a run's images that spreads over its prompts, each image with its
prompt (or class) written under it, wrapped so it can be read.

Images the safety checker flagged (`nsfw_flag` in the run's scores) are withheld: a grey tile
takes their place, so no flagged image reaches MLflow or a report.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from darkroom.evals.outputs import SpecRows
from darkroom.evals.results import SCORES_FILE
from darkroom.evals.scorers.images import decode_checked
from darkroom.platform.data import layout, storage
from darkroom.platform.data.storage import Location

CELL = 96  # pixels per image: 16 px digits upscale 6x, 512 px images shrink
LINES, LINE = 3, 12  # caption: up to 3 lines of 12 px under each image
COLUMNS = 8
GREY = 128


def spread(prompt_ids: list[str], sample_idx: list[int], count: int) -> list[int]:
    """Indices of `count` rows spread over the prompts: with at least `count` prompts, the first
    image of evenly spaced prompts; with fewer, every prompt's first image, then every prompt's
    second, and so on."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (str(prompt_ids[i]), sample_idx[i]))
    by_prompt: dict[str, list[int]] = {}
    for i in order:
        by_prompt.setdefault(str(prompt_ids[i]), []).append(i)
    prompts = list(by_prompt.values())
    if len(prompts) >= count:
        picks = np.linspace(0, len(prompts) - 1, count).round().astype(int)
        return [prompts[p][0] for p in picks]
    chosen: list[int] = []
    for rank in range(max(len(p) for p in prompts) if prompts else 0):
        chosen += [p[rank] for p in prompts if rank < len(p)]
    return chosen[:count]


def caption_of(prompt: str | None, label: object) -> str:
    """What a tile says: the prompt, else the class it was asked for."""
    if prompt:
        return str(prompt)
    return f"class {label}" if label is not None else ""


def render(images: list[np.ndarray], captions: list[str], columns: int = COLUMNS) -> Image.Image:
    """The grid: CELL x CELL tiles (nearest-neighbour scaled), captions wrapped under each."""
    font = ImageFont.load_default(size=11)
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    height = CELL + LINES * LINE + 4
    sheet = Image.new("RGB", (columns * CELL, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    width = max(8, int(CELL / font.getlength("n")))  # characters that fit in a tile
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * CELL, (i // columns) * height
        sheet.paste(Image.fromarray(image).convert("RGB").resize((CELL, CELL),
                                                                 Image.Resampling.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width)[:LINES] or [""]
        if len(textwrap.wrap(caption, width)) > LINES:
            lines[-1] = lines[-1][: width - 1] + "…"
        for j, line in enumerate(lines):
            draw.text((x + 2, y + CELL + 2 + j * LINE), line, fill="black", font=font)
    return sheet


def flagged_rows(run_dir: Location) -> set[str]:
    """Row ids the safety checker flagged in the run's scores (a local folder or a URI)."""
    path = run_dir / layout.SCORES / SCORES_FILE
    if not storage.exists(path):
        return set()
    table = storage.read_parquet(path)
    if "nsfw_flag" not in table.column_names:
        return set()
    return {r for r, f in zip(table.column("row_id").to_pylist(),
                              table.column("nsfw_flag").to_pylist(), strict=True) if f}


def contact_sheet_png(run_dir: Location, count: int, rows: SpecRows | None = None) -> bytes:
    """`count` images spread over the run's prompts (those of `rows`, when given), captioned,
    as PNG bytes."""
    columns = ["row_id", "prompt_id", "sample_idx", "image", "prompt", "class_label", "width",
               "height"]
    table = layout.read_table(run_dir / layout.IMAGES, columns=columns)
    if table is not None and rows is not None:
        table = rows.select(table)
    images, captions = [], []
    if table is not None and len(table):
        flagged = flagged_rows(run_dir)
        picked = table.take(spread(table.column("prompt_id").to_pylist(),
                                   table.column("sample_idx").to_pylist(), count)).to_pylist()
        for row in picked:
            caption = caption_of(row["prompt"], row["class_label"])
            image = np.full((CELL, CELL, 3), GREY, np.uint8)
            if row["row_id"] in flagged:
                caption = f"withheld: {caption}"
            else:
                try:
                    image = decode_checked(row["image"], row["width"], row["height"])
                except Exception:  # left out of the metrics; shown as a grey tile here
                    caption = f"unreadable: {caption}"
            images.append(image)
            captions.append(caption)
    buffer = io.BytesIO()
    render(images, captions).save(buffer, format="PNG")
    return buffer.getvalue()
