"""The shape of the package: light commands stay light, and no module imports itself back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "ray")
PROBE = """
import atexit, sys
atexit.register(lambda: print("LOADED", *[m for m in {heavy!r} if m in sys.modules],
                              file=sys.stderr))
from darkroom.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["validate", "configs/jobs/smoke.yaml"],
    ["schema"],
    ["run", "configs/jobs/smoke.yaml", "--dry-run"],
    ["serve", "configs/serve/tiny.yaml", "--dry-run"],
    ["validate", "configs/jobs/quickstart.yaml", "sweep.sampler=[{name: ddim, overrides: {}}]"],
], ids=lambda argv: " ".join(argv[:2]))
def test_light_commands_import_no_torch_diffusers_transformers_or_ray(argv):
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = next(line for line in done.stderr.splitlines() if line.startswith("LOADED"))
    assert loaded == "LOADED", f"`darkroom {' '.join(argv)}` imported {loaded.split()[1:]}"


def import_graph() -> dict[str, set[str]]:
    """darkroom's modules -> the darkroom modules each imports (at any depth in its code)."""
    import grimp

    graph = grimp.build_graph("darkroom")
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_darkroom():
    graph = import_graph()
    # a package's __init__ is imported by its submodules by definition: not a design cycle
    graph = {m: {o for o in imports if not m.startswith(o + ".")} for m, imports in graph.items()}
    assert cycles(graph) == []


def test_the_readme_names_every_sampler_and_family():
    from darkroom.platform.families import registered
    from darkroom.platform.samplers import SAMPLERS

    readme = (ROOT / "README.md").read_text()
    assert [name for name in SAMPLERS if f"`{name}`" not in readme] == []
    ours = [n for n, f in registered().items() if f.call.__module__.startswith("darkroom.")]
    assert [name for name in ours if f"`tiny:{name}`" not in readme] == []
