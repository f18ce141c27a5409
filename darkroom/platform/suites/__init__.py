"""Benchmark suites as prompt sources: a registry of published prompt sets (GenEval, GenEval 2,
DPG-Bench, T2I-CompBench's validation split, GenAI-Bench, PartiPrompts, DrawBench, COCO-30k
captions), each naming its canonical files (URL and SHA-256), licence, format, default images per
prompt and default metrics. Jobs read a suite's prompts from it (`prompts: {suite: NAME}`);
evaluation reads each prompt's skills, questions and detector checks back from it. A suite can
also be a local file (or a folder of files) in the same format.

Imports only the standard library: `darkroom validate` may read it.
"""

from __future__ import annotations

from pathlib import Path

from darkroom.platform.errors import did_you_mean
from darkroom.platform.suites import formats
from darkroom.platform.suites.files import SuiteError, cached_path, expected_sha256, member_bytes
from darkroom.platform.suites.files import read as read_file
from darkroom.platform.suites.items import Question, Suite, SuiteFile, SuiteItem

__all__ = ["Question", "Suite", "SuiteError", "SuiteFile", "SuiteItem", "items", "suite",
           "suites"]

GITHUB = "https://raw.githubusercontent.com"
HF = "https://huggingface.co/datasets"
COMPBENCH = ("color", "shape", "texture", "spatial", "non_spatial", "complex", "3d_spatial",
             "numeracy")
COMPBENCH_SHA256 = {
    "color": "1634259756dbc77d13093d907d414480080ec9790a8c97ad09efaea7b2534f2d",
    "shape": "37e1a276906c7ea9516cbd7ac8501be896006c0c17ca7344f260562834455bae",
    "texture": "fbb5363515b4a28009e360afaaaf389d2dd2289e50dbb0c6ef4ea0c7fe4f3d4f",
    "spatial": "8707a1d7e42ce3002d95363cf55f74bd043c843ae27108f5125aaaa7840ca988",
    "non_spatial": "04c56cc9ac441dc9ea6c5157652058bd1635b5308526dd31bb29a1caab9a758d",
    "complex": "1b808018b8d9916db3d47d5aa2ef18377a3549a56901a474156f799824cdf3b4",
    "3d_spatial": "c9953597315f36a5fcb41291bb19bdc6ab5f64a0fa760d691b4854a73f5d1fe9",
    "numeracy": "dad8df141604b70ba7554bec724e3db0a80023680769b5c514854ea2d2527bbe",
}

SUITES = (
    Suite("geneval", "GenEval: objects, counts, colours, positions",
          "Ghosh et al. 2023, github.com/djghosh13/geneval",
          (SuiteFile(f"{GITHUB}/djghosh13/geneval/af4902f24d3ca90ebbb446dd9891a59e0f82725f/"
                     "prompts/evaluation_metadata.jsonl",
                     "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
                     "evaluation_metadata.jsonl"),),
          "MIT", "JSONL, 553 prompts: tag (single_object, two_object, counting, colors, "
          "position, color_attr), include [{class, count, color?, position?}], exclude?, prompt",
          formats.geneval, 4, ("geneval", "vqascore")),
    Suite("geneval2", "GenEval 2: compositional prompts with atom questions (Soft-TIFA)",
          "github.com/facebookresearch/GenEval2",
          (SuiteFile(f"{GITHUB}/facebookresearch/GenEval2/"
                     "a6e82d2289e8d418f27f0adee77908b07060eea3/geneval2_data.jsonl",
                     "09233adbc9f877fba205f1a20efa4a8640e7e62a91dfd55893562bed8a928e43",
                     "geneval2_data.jsonl"),),
          "CC BY-NC 4.0", "JSONL, 800 prompts: prompt, atom_count, vqa_list [[question, "
          "answer]], skills (one per question: object, attribute, count, position, verb)",
          formats.geneval2, 1, ("qa_alignment", "vqascore")),
    Suite("dpg_bench", "DPG-Bench: dense prompts, DSG questions with dependencies",
          "Hu et al. 2024 (ELLA), github.com/TencentQQGYLab/ELLA",
          (SuiteFile(f"{GITHUB}/TencentQQGYLab/ELLA/3c228f1dc6c4d3cad0a47493816151a419f14db3/"
                     "dpg_bench/dpg_bench.csv", None, "dpg_bench.csv"),),
          "Apache-2.0", "CSV, one row per question of 1,065 prompts: item_id, text, keywords, "
          "proposition_id, dependency, category_broad, category_detailed, tuple, "
          "question_natural_language", formats.dpg, 4, ("qa_alignment",),
          notes="no SHA-256 is published here: `darkroom suites pin dpg_bench`"),
    Suite("t2i_compbench", "T2I-CompBench validation split (300 prompts a category)",
          "Huang et al. 2023, github.com/Karine-Huang/T2I-CompBench (its issue #7: report on "
          "the validation prompts)",
          tuple(SuiteFile(f"{GITHUB}/Karine-Huang/T2I-CompBench/"
                          f"1b7094991a57f3c22abdd4f6e8ba6c1a15517073/examples/dataset/"
                          f"{category}_val.txt", COMPBENCH_SHA256[category],
                          f"{category}_val.txt") for category in COMPBENCH),
          "MIT", "text, one prompt a line, a file per category (color, shape, texture, spatial, "
          "non_spatial, complex, 3d_spatial, numeracy)", formats.t2i_compbench, 10,
          ("vqascore",)),
    Suite("genai_bench", "GenAI-Bench: 1,600 compositional prompts with skill tags",
          "Li et al. 2024, huggingface.co/datasets/BaiqiL/GenAI-Bench-1600",
          (SuiteFile(f"{HF}/BaiqiL/GenAI-Bench-1600/resolve/main/genai_image.json", None,
                     "genai_image.json"),
           SuiteFile(f"{HF}/BaiqiL/GenAI-Bench-1600/resolve/main/genai_skills.json", None,
                     "genai_skills.json")),
          "see the dataset card", "JSON: genai_image.json {\"00000\": {prompt, ...}} and "
          "genai_skills.json {skill: [prompt numbers]}", formats.genai_bench, 1, ("vqascore",),
          notes="no SHA-256 is published here: `darkroom suites pin genai_bench`"),
    Suite("partiprompts", "PartiPrompts: 1,632 prompts in 12 categories",
          "Yu et al. 2022, github.com/google-research/parti",
          (SuiteFile(f"{GITHUB}/google-research/parti/5a657978134374ce28973948331b319adef164bd/"
                     "PartiPrompts.tsv",
                     "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb",
                     "PartiPrompts.tsv"),),
          "Apache-2.0", "TSV: Prompt, Category, Challenge, Note", formats.parti, 1,
          ("vqascore", "clip_score")),
    Suite("drawbench", "DrawBench: 200 prompts in 11 categories",
          "Saharia et al. 2022, huggingface.co/datasets/sayakpaul/drawbench",
          (SuiteFile(f"{HF}/sayakpaul/drawbench/resolve/main/drawbench.csv", None,
                     "drawbench.csv"),),
          "see the dataset card", "CSV: Prompts, Category", formats.drawbench, 4,
          ("vqascore", "clip_score"),
          notes="no SHA-256 is published here: `darkroom suites pin drawbench`"),
    Suite("coco30k", "COCO-30k: 30,000 COCO 2014 validation captions for FID",
          "Lin et al. 2014; the FID-30k protocol", (SuiteFile(
              "http://images.cocodataset.org/annotations/annotations_trainval2014.zip", None,
              "annotations_trainval2014.zip", "annotations/captions_val2014.json"),),
          "CC BY 4.0", "JSON annotations (captions_val2014.json in the archive); each image's "
          "first caption, 30,000 images drawn with seed 0", formats.coco_captions, 1,
          ("fid", "clip_score"),
          notes="no SHA-256 is published here: `darkroom suites pin coco30k`"),
)


def suites() -> dict[str, Suite]:
    """The registered suites by name."""
    return {s.name: s for s in SUITES}


def suite(name: str) -> Suite:
    """A registered suite; an unknown name is a SuiteError with a suggestion."""
    found = suites()
    if name not in found:
        raise SuiteError(f"unknown suite `{name}`;{did_you_mean(name, found)}")
    return found[name]


def local_files(suite_: Suite, path: str | Path, read_bytes=None) -> dict[str, bytes]:
    """A local file of the suite's format ({its name: bytes}), or a folder holding the suite's
    files under their published names."""
    read_bytes = read_bytes or (lambda p: Path(p).read_bytes())
    path = Path(path)
    if path.is_dir():
        names = [f.name for f in suite_.files]
        found = {n: read_bytes(path / n) for n in names if (path / n).is_file()}
        if not found:
            found = {p.name: read_bytes(p) for p in sorted(path.glob("*.txt"))}
        if not found:
            raise SuiteError(f"folder {path} holds none of the `{suite_.name}` files "
                             f"({', '.join(names)})")
        return found
    member = suite_.files[0].member if len(suite_.files) == 1 else None
    return {path.name: member_bytes(read_bytes(path), member)}


def items(name: str, file: str | Path | None = None, read_bytes=None) -> list[SuiteItem]:
    """The prompts of a suite, from its verified cached files (downloaded once) or from a
    local file or folder in its format; a SuiteError says what is wrong and the fix."""
    found = suite(name)
    files = (local_files(found, file, read_bytes) if file is not None
             else {f.name: read_file(found, f) for f in found.files})
    try:
        parsed = found.parse(files)
    except (ValueError, KeyError, TypeError) as err:
        where = file if file is not None else cached_path(found, found.files[0]).parent
        raise SuiteError(f"suite `{name}`: {where} is not in its format ({found.columns}): "
                         f"{err}") from err
    if not parsed:
        raise SuiteError(f"suite `{name}` holds no prompts")
    return parsed


def describe(found: Suite) -> str:
    """A suite's entry as `darkroom suites list` prints it."""
    files = "; ".join(f"{f.url} (SHA-256 {expected_sha256(found, f) or 'not pinned'})"
                      for f in found.files)
    return (f"{found.name}: {found.title}\n  source: {found.source}\n  licence: "
            f"{found.licence}\n  format: {found.columns}\n  images per prompt: "
            f"{found.images_per_prompt}; metrics: {', '.join(found.metrics)}\n  files: {files}")
