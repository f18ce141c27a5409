"""Run against baseline, image by image: what `darkroom compare --baseline` and
`--real-baseline` compute from the runs' folders (per-image scores, cached features, the eval
record naming the reference statistics), never from MLflow's summary numbers.

Runs of one job share prompts and seeds: row `<run>/<prompt_id>/<sample_idx>` of one run and the
same (prompt_id, sample_idx) of another were made from the same prompt and the same noise. Their
difference is resampled with the same prompts drawn for both (paired bootstrap), which takes out
the variation the prompts cause in both. Runs that do not share prompts and seeds are resampled
independently (unpaired), with a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darkroom.evals import registry
from darkroom.evals.categories import attach_annotations, prompt_annotations
from darkroom.evals.feature_cache import align, read_features
from darkroom.evals.metrics.base import Context, RunScores, feature_column
from darkroom.evals.metrics.bootstrap import Difference, difference, resample_counts
from darkroom.evals.metrics.compute import higher_is_better, statistics, with_intervals
from darkroom.evals.metrics.distances import Stats
from darkroom.evals.outputs import image_hashes, read_job_file, read_rows, spec_rows
from darkroom.evals.reference import load_npz
from darkroom.evals.results import SCORES_FILE, left_out, read_record
from darkroom.evals.spec import EvalSpec
from darkroom.platform.data import layout, storage
from darkroom.platform.data.runinfo import read_run_info
from darkroom.platform.data.storage import Location
from darkroom.platform.errors import UserError


@dataclass
class RunData:
    """One evaluated run read back from its folder: its rows with per-image scores and cached
    features, the eval settings and the reference statistics its metrics were measured with."""

    name: str
    scores: RunScores
    spec: EvalSpec
    references: dict[str, Stats]
    identities: dict[str, str]  # extractor -> what its reference and protocol were
    missing: dict[str, str] = field(default_factory=dict)  # extractor -> why it is absent


def load_run(name: str, folder: Location) -> RunData | str:
    """The run in `folder` (a path or a URI) as its last evaluation left it, or why it cannot
    be compared."""
    record = read_record(folder)
    if record is None:
        return (f"{folder} has no eval record (scores/eval.json is missing or not readable): "
                "evaluate it again with this version (`darkroom eval`)")
    try:
        spec = EvalSpec.model_validate(record["spec"])
    except ValueError as err:  # settings this version does not know
        return (f"{folder}: the eval settings in scores/eval.json are not valid here "
                f"({str(err).splitlines()[0][:200]}): evaluate it again (`darkroom eval`)")
    try:
        info = read_run_info(folder)
    except UserError as err:
        return str(err)
    job_spec = read_job_file(folder.parent)
    rows = spec_rows(folder, info, job_spec)[0]  # the rows its current spec asks for
    columns = read_rows(folder, left_out(folder), rows=rows)
    if columns is None:
        return f"{folder} holds no readable image files"
    scores_file = folder / layout.SCORES / SCORES_FILE
    if storage.exists(scores_file):
        per_image = storage.read_parquet(scores_file).to_pydict()
        index = {r: i for i, r in enumerate(per_image["row_id"])}
        for column, values in per_image.items():
            if column not in ("row_id", "evaluated_at"):
                columns[column] = np.array([values[index[r]] if r in index else None
                                            for r in columns["row_id"]], dtype=object)
    scores = RunScores(name, columns)
    data = RunData(name, scores, spec, {}, {})
    hashes = image_hashes(folder, rows)
    for extractor, protocol in (record.get("protocols") or {}).items():
        cache = read_features(folder, extractor, protocol, hashes)
        aligned = None if cache is None else align(cache, columns["row_id"])
        info = (record.get("references") or {}).get(extractor) or {}
        path = Path(info.get("cache") or info.get("source") or "")
        if aligned is None:
            data.missing[extractor] = (f"{extractor} features of {folder.name} are not cached "
                                       "for its current images: evaluate it again")
        elif not path.is_file():
            data.missing[extractor] = (f"the {extractor} reference statistics {path} are gone: "
                                       "evaluate the run again")
        else:
            scores.columns[feature_column(extractor)] = aligned.astype(np.float64)
            data.references[extractor] = load_npz(path)[0]
            data.identities[extractor] = f"{protocol}|{info.get('fingerprint') or path}"
    attach_annotations(columns, prompt_annotations(job_spec))
    return data


# -- pairing --------------------------------------------------------------------------------------


def _keys(scores: RunScores) -> list[tuple[str, str]]:
    cols = scores.columns
    if "prompt_id" not in cols or "sample_idx" not in cols:
        return []
    return [(str(p), str(s)) for p, s in zip(cols["prompt_id"], cols["sample_idx"], strict=True)]


def pairing(run: RunScores, base: RunScores) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Row positions of the images both runs made from the same prompt and seed, in the same
    order, and None; or empty arrays and the reason they cannot be paired."""
    mine, theirs = _keys(run), _keys(base)
    if not mine or not theirs:
        return np.array([], int), np.array([], int), "the rows carry no prompt ids"
    where = {k: i for i, k in enumerate(theirs)}
    shared = [(i, where[k]) for i, k in enumerate(mine) if k in where]
    if not shared:
        return np.array([], int), np.array([], int), "the runs share no prompts"
    a, b = (np.array(side, dtype=int) for side in zip(*shared, strict=True))
    for column, what in (("seed", "seeds"), ("prompt", "prompts"), ("class_label", "prompts")):
        if column in run.columns and column in base.columns and any(
                x != y for x, y in zip(run.columns[column][a], base.columns[column][b],
                                       strict=True)):
            return np.array([], int), np.array([], int), f"the runs do not share {what}"
    return a, b, None


@dataclass
class Comparison:
    """A run against the baseline: the difference per MLflow key, and notes."""

    run: str
    differences: dict[str, Difference]
    missing: dict[str, str]
    notes: list[str]


def _same_references(run: RunData, base: RunData, metric: str) -> str | None:
    if not registry.metrics()[metric].on_features:
        return None
    extractor = registry.metrics()[metric].part_for(run.spec).extractor
    if extractor in run.missing or extractor in base.missing:
        return run.missing.get(extractor) or base.missing.get(extractor)
    if run.identities.get(extractor) != base.identities.get(extractor):
        return "the two runs were measured with different references or feature extractors"
    return None


def compare_runs(run: RunData, base: RunData, metrics: list[str], resamples: int, seed: int,
                 level: float) -> Comparison:
    """Every metric both runs have, as (run - baseline) with its interval and verdict."""
    a, b, why_not = pairing(run.scores, base.scores)
    notes = []
    if why_not is None:
        mine, theirs = run.scores.take(a), base.scores.take(b)
        counts = mine.counts(resamples, seed)
        other, units = counts, mine.units()
        if len(a) < max(run.scores.count, base.scores.count):
            notes.append(f"paired over the {len(a)} images both runs have")
    else:
        mine, theirs = run.scores, base.scores
        counts = mine.counts(resamples, seed)
        other, units = theirs.counts(resamples, seed + 1), min(mine.units(), theirs.units())
        notes.append(f"unpaired: {why_not}; each run resampled on its own")
    differences: dict[str, Difference] = {}
    missing: dict[str, str] = {}
    for metric in metrics:
        reason = _same_references(run, base, metric)
        if reason:
            missing[metric] = reason
            continue
        ours, gone = statistics(mine, Context(run.spec, run.references), [metric])
        baseline, gone_too = statistics(theirs, Context(base.spec, base.references), [metric])
        if gone or gone_too:
            missing[metric] = (gone or gone_too)[metric]
            continue
        for key, stat in ours.items():
            if key not in baseline or stat.resample is None:
                continue
            differences[key] = difference(
                stat.value, baseline[key].value, stat.resample(counts),
                baseline[key].resample(other), higher_is_better(key), level,
                paired=why_not is None, shift=stat.drifts or baseline[key].drifts,
                units=units)
    return Comparison(run.name, differences, missing, notes)


# -- real images against real images --------------------------------------------------------------


@dataclass
class RealBaseline:
    """What real images score against the rest of the same reference, with intervals."""

    count: int
    others: int
    metrics: dict[str, float]
    missing: dict[str, str]


def real_baseline(data: RunData, count: int, seed: int = 0) -> RealBaseline | str:
    """`count` reference images (drawn with `seed`) measured as if generated, against the other
    reference images, with the runs' own feature extractors, settings and bootstrap."""
    spec = data.spec
    on_features = [registry.metrics()[m] for m in spec.metrics
                   if registry.metrics()[m].on_features]
    extractors = {m.part_for(spec).extractor for m in on_features}
    references = {e: data.references[e] for e in extractors if e in data.references}
    usable = {e: r for e, r in references.items() if r.features is not None}
    if not usable:
        return ("the runs' reference statistics hold no features (a stats file), so real "
                "images cannot be drawn from them")
    sizes = {len(r.features) for r in usable.values()}
    total = min(sizes)
    if not 2 <= count <= total - 2:
        return f"--real-baseline: COUNT must be between 2 and {total - 2}, got {count}"
    order = np.random.default_rng(seed).permutation(total)
    sample, rest = order[:count], order[count:]
    columns: dict[str, np.ndarray] = {"row_id": np.arange(count).astype(str)}
    rest_refs = {}
    for extractor, ref in usable.items():
        columns[feature_column(extractor)] = ref.features[sample]
        rest_refs[extractor] = Stats.of(ref.features[rest])
    metrics = [m.name for m in on_features if m.name != "fid_per_category"]
    stats, missing = statistics(RunScores("real", columns), Context(spec, rest_refs), metrics)
    counts = resample_counts(columns["row_id"], spec.bootstrap.resamples or 500,
                             spec.bootstrap.seed)
    return RealBaseline(count, total - count, with_intervals(stats, counts, spec.bootstrap.level),
                        missing)
