"""What a benchmark suite is made of: its prompts (`SuiteItem`), each with its skills, the
questions a judge is asked about it and the checks a detector makes, and the suite itself
(`Suite`: where its files are, their SHA-256, licence, format, defaults)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """A question about an image (an atom of TIFA, DSG, Soft-TIFA), its expected answer, its
    skill, and the ids of the questions it depends on (DSG: asked only if they hold)."""

    text: str
    answer: str = "yes"
    skill: str = ""
    id: str = ""
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteItem:
    """One prompt of a suite: its text, skills (categories), questions, detector checks
    (GenEval's `include`/`exclude`) and the rest of its row."""

    prompt: str
    skills: tuple[str, ...] = ()
    questions: tuple[Question, ...] = ()
    checks: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def annotation(self) -> str:
        """What evaluation needs of the prompt, as sorted-key JSON (skills, questions, checks,
        metadata), carried to the scoring actors with its rows."""
        return json.dumps({"skills": list(self.skills),
                           "questions": [asdict(q) for q in self.questions],
                           "checks": self.checks, "metadata": dict(self.metadata)},
                          sort_keys=True, default=str)


@dataclass(frozen=True)
class SuiteFile:
    """One file of a suite: where it is published, its SHA-256 there (None: not known here;
    `darkroom suites pin` records it), the name it is cached under, and for an archive the
    member that is read."""

    url: str
    sha256: str | None
    name: str
    member: str | None = None


Parse = Callable[[Mapping[str, bytes]], list[SuiteItem]]  # file name -> bytes, in, prompts out


@dataclass(frozen=True)
class Suite:
    """A registered benchmark suite."""

    name: str
    title: str
    source: str  # the paper and repository
    files: tuple[SuiteFile, ...]
    licence: str
    columns: str  # the format, as published
    parse: Parse
    images_per_prompt: int
    metrics: tuple[str, ...]
    notes: str = ""
