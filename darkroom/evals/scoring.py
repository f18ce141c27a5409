"""The per-image pass: Ray Data reads image rows, a pool of `Scorer` actors extracts features and
per-image scores, and the driver gets the columns back keyed by row_id.

A part that cannot load on the actor (missing weights) does not stop the others: its reason comes
back in an `error_<part>` column and the metrics that need it are recorded as missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from darkroom.evals.spec import SafetySpec
from darkroom.platform.data.records import decode_png
from darkroom.platform.errors import UserError

INPUT_COLUMNS = ["row_id", "image", "prompt", "class_label"]
META_COLUMNS = ["prompt_id", "sample_idx", "seed"]  # passed through when the files have them
Part = Callable[[list[np.ndarray], Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class ScorePlan(BaseModel):
    """What the actors compute: each non-empty field turns parts on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: dict[str, str | None] = {}  # feature extractor name -> its weights
    clip_model: str | None = None
    safety: SafetySpec | None = None
    classifier: str | None = None
    preference: dict[str, str] = {}  # preference scorer name -> its weights
    max_prompt_tokens: int = 77
    device: str = "cpu"  # "cuda" on actors that hold a GPU

    def parts(self) -> list[str]:
        """The per-image passes this plan runs: `features.<extractor>`, `clip`, `safety`,
        `classifier`, `preference.<scorer>`."""
        parts = [f"features.{name}" for name in sorted(self.features)]
        parts += [name for name in ("clip", "safety", "classifier")
                  if getattr(self, _PLAN_FIELD[name]) is not None]
        return parts + [f"preference.{name}" for name in sorted(self.preference)]

    def only(self, parts: list[str]) -> ScorePlan:
        """The same plan with only the given parts on."""
        return ScorePlan(
            features={k: v for k, v in self.features.items() if f"features.{k}" in parts},
            clip_model=self.clip_model if "clip" in parts else None,
            safety=self.safety if "safety" in parts else None,
            classifier=self.classifier if "classifier" in parts else None,
            preference={k: v for k, v in self.preference.items()
                        if f"preference.{k}" in parts},
            max_prompt_tokens=self.max_prompt_tokens, device=self.device)


def _features_part(plan: ScorePlan, name: str) -> Part:
    from darkroom.evals.extractors import load_extractor

    extractor = load_extractor(name, plan.features[name], plan.device)
    return lambda images, batch: {f"features.{name}": extractor(images)}


def _preference_part(plan: ScorePlan, name: str) -> Part:
    from darkroom.evals.preference import load_scorer

    scorer = load_scorer(name, plan.preference[name], plan.device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p or "") for p in batch.get("prompt", [""] * len(images))]
        return {name: np.asarray(scorer.score(images, prompts), dtype=np.float64)}

    return part


def _clip_part(plan: ScorePlan) -> Part:
    import torch

    from darkroom.evals.extractors import image_embeddings, load_clip

    model, processor = load_clip(plan.clip_model)
    model.to(plan.device)
    tokenizer = processor.tokenizer
    max_tokens = min(plan.max_prompt_tokens, model.config.text_config.max_position_embeddings)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [str(p or "") for p in batch["prompt"]]
        full = tokenizer(prompts, padding=False, truncation=False)["input_ids"]
        # Truncate with the tokenizer, which keeps the end token CLIP pools from
        text = tokenizer(prompts, padding=True, truncation=True, max_length=max_tokens,
                         return_tensors="pt")
        with torch.no_grad():
            txt = model.get_text_features(input_ids=text.input_ids.to(plan.device),
                                          attention_mask=text.attention_mask.to(plan.device))
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        img = image_embeddings(model, processor, images)
        img = img / img.norm(p=2, dim=-1, keepdim=True)
        txt = txt / txt.norm(p=2, dim=-1, keepdim=True)
        return {"clip_score": (100 * (img * txt).sum(-1)).double().cpu().numpy(),
                "clip_truncated": np.array([len(ids) > max_tokens for ids in full])}

    return part


def _safety_part(plan: ScorePlan) -> Part:
    from darkroom.evals.safety import load_safety_checker

    spec = plan.safety
    checker = load_safety_checker(spec.checker, spec.threshold, weights=spec.weights,
                                  device=plan.device)

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores = checker.score(images)
        return {"nsfw_score": scores, "nsfw_flag": checker.flags(scores)}

    return part


def _classifier_part(plan: ScorePlan) -> Part:
    from darkroom.evals.extractors import per_size, to_float_nchw
    from darkroom.evals.metrics.compute import CLASSIFIERS

    model = CLASSIFIERS[plan.classifier].load(None)
    if hasattr(model, "to"):
        model.to(plan.device)

    @per_size
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return model.predict(to_float_nchw(images).to(plan.device)).cpu().numpy()

    def part(images: list[np.ndarray], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"predicted_label": predict(images).astype(np.int64)}

    return part


PARTS: dict[str, Callable[[ScorePlan], Part]] = {
    "clip": _clip_part,
    "safety": _safety_part,
    "classifier": _classifier_part,
}
_PLAN_FIELD = {"clip": "clip_model", "safety": "safety", "classifier": "classifier"}


def build_part(plan: ScorePlan, part: str) -> Part:
    """The named part of a plan, loaded (`features.<extractor>`, `preference.<scorer>` or one
    of PARTS)."""
    kind, _, name = part.partition(".")
    if kind == "features":
        return _features_part(plan, name)
    if kind == "preference":
        return _preference_part(plan, name)
    return PARTS[part](plan)


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"


class Scorer:
    """Ray Data actor: image rows in; row_id, features and per-image scores out."""

    def __init__(self, plan: Mapping[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)  # one thread per CPU actor: more fight Ray's other workers
        self.plan = ScorePlan.model_validate(plan)
        self.parts: dict[str, Part] = {}
        self.errors: dict[str, str] = {}
        for name in self.plan.parts():
            try:
                self.parts[name] = build_part(self.plan, name)
            except Exception as err:  # reported per metric as missing, never as 0
                self.errors[name] = _reason(err)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decode a batch's images and run every part on them; unloadable parts as errors.

        An image that does not decode does not sink the batch: a blank stand-in takes its
        place in the parts (so every column keeps one value per row) and its `unreadable`
        column gives the reason; the driver leaves such rows out of every metric.
        """
        images, unreadable = decode_all(batch["image"])
        out = {k: np.asarray(batch[k]) for k in ("row_id", "group", "prompt", "class_label",
                                                 *META_COLUMNS) if k in batch}
        out["unreadable"] = unreadable
        for part in self.parts.values():
            out.update(part(images, batch))
        for name, reason in self.errors.items():
            out[f"error_{name}"] = np.array([reason] * len(images), dtype=object)
        return out


def decode_all(encoded: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """PNG bytes -> images, with a blank stand-in and a reason for each one that fails ("" for
    the others: an all-None column would come back from Arrow as NaNs)."""
    images: list[np.ndarray | None] = []
    reasons = np.full(len(encoded), "", dtype=object)
    for i, data in enumerate(encoded):
        try:
            images.append(decode_png(data))
        except Exception as err:  # any undecodable image is that row's problem alone
            images.append(None)
            reasons[i] = f"undecodable image: {type(err).__name__}: {str(err)[:200]}"
    shape = next((image.shape for image in images if image is not None), (64, 64, 3))
    blank = np.zeros(shape, np.uint8)
    return [blank if image is None else image for image in images], reasons


def scored_dataset(ds, plan: ScorePlan, actors: int = 1, batch_size: int = 32,
                   actor: type = Scorer, gpus_per_actor: float = 0.0):
    """The Ray dataset `ds` (columns row_id, image, group, optionally prompt and class_label)
    mapped through a pool of `actors` Scorers (or a class that wraps one, for benchmarks)."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        actor, fn_constructor_kwargs={"plan": plan.model_dump()}, batch_size=batch_size,
        batch_format="numpy", compute=ActorPoolStrategy(size=actors), num_cpus=1,
        num_gpus=gpus_per_actor or None,
    )


def score_dataset(ds, plan: ScorePlan, actors: int = 1, batch_size: int = 32,
                  gpus_per_actor: float = 0.0) -> dict[str, Any]:
    """The scored columns of `ds`, gathered on the driver as numpy arrays."""
    batches = scored_dataset(ds, plan, actors, batch_size, gpus_per_actor=gpus_per_actor
                             ).iter_batches(batch_size=None, batch_format="numpy")
    chunks = list(batches)
    if not chunks:
        return {}
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def images_dataset(files: Sequence[str], groups: Sequence[str],
                   skipped: list[tuple[str, str]] | None = None):
    """A Ray dataset over image Parquet files (local paths or URIs); `group` names the file's run.

    The files are read by Ray tasks on the workers, from where they are (the driver gets a few
    bytes per file back; the images stay in the object store), and all of them are read before
    the scoring actors start, so read tasks never wait for CPUs the actors hold. Page checksums
    are verified; a file that cannot be read is left out and listed in `skipped` as (path,
    reason). A row id that two files of a group hold is scored twice and counted once
    (`results.run_scores`).
    """
    import ray

    from darkroom.platform.data import storage

    read = ray.remote(read_image_files).options(num_returns=2)
    entries = list(zip(map(str, files), groups, strict=True))
    pending = [read.remote(entries[i:i + FILES_PER_READ], storage.registered())
               for i in range(0, len(entries), FILES_PER_READ)]
    tables = []
    for summary, table in pending:
        for path, reason in ray.get(summary):
            if reason is not None and skipped is not None:
                skipped.append((path, reason))
        tables.append(table)
    return ray.data.from_arrow_refs(tables) if tables else ray.data.from_items([])


FILES_PER_READ = 8


def read_image_files(entries: Sequence[tuple[str, str]], options: dict | None
                     ) -> tuple[list[tuple[str, str | None]], pa.Table]:
    """Ray task: (path, group) pairs -> ([(path, why unreadable or None)], their rows with a
    `group` column)."""
    from darkroom.platform.data import storage

    storage.register(options)
    # files written before a column existed get it as nulls, so every block has one schema
    schema = pa.schema([("row_id", pa.string()), ("image", pa.binary()), ("prompt", pa.string()),
                        ("class_label", pa.int64()), ("prompt_id", pa.string()),
                        ("sample_idx", pa.int64()), ("seed", pa.int64()), ("group", pa.string())])
    summaries, tables = [], []
    for path, group in entries:
        try:
            table = storage.read_parquet(storage.location(path), verify=True)
            table = table.select([c for c in INPUT_COLUMNS + META_COLUMNS
                                  if c in table.column_names])
        except Exception as err:  # reported with the run; the other files are still scored
            summaries.append((path, f"{type(err).__name__}: {str(err)[:200]}"))
            continue
        summaries.append((path, None))
        table = table.append_column("group", pa.array([group] * len(table), pa.string()))
        for missing in (f for f in schema if f.name not in table.column_names):
            table = table.append_column(missing, pa.nulls(len(table), missing.type))
        tables.append(table.select(schema.names).cast(schema))
    return summaries, pa.concat_tables(tables) if tables else schema.empty_table()


def table_dataset(table: pa.Table, group: str):
    """A Ray dataset over an in-memory table with `image` (encoded bytes)."""
    import ray

    table = table.append_column("row_id", pa.array([str(i) for i in range(len(table))]))
    table = table.append_column("group", pa.array([group] * len(table)))
    return ray.data.from_arrow(table.select(["row_id", "image", "group"]))
