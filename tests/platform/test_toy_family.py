"""A family from one module of its own (tests/platform/toy_family.py), with no edit anywhere else:
it validates, meets the family contract, and `darkroom models list` lists it, in this process
and through $DARKROOM_PLUGINS in a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darkroom.cli import main
from darkroom.platform.families import registered
from tests.platform import toy_family
from tests.platform.family_contract import FamilyContract

ROOT = Path(__file__).resolve().parents[2]


class TestToyFamily(FamilyContract):
    @pytest.fixture
    def family(self):
        return toy_family.FAMILY


def test_it_is_registered_and_listed(capsys):
    assert registered()["toy-uncond"] is toy_family.FAMILY
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny:toy-uncond" in out and "toy-uncond (unconditional pixel-space DDPM" in out


def test_a_plugin_module_is_listed_by_the_command():
    env = {**os.environ, "DARKROOM_PLUGINS": "tests.platform.toy_family",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "darkroom", "models", "list"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tiny:toy-uncond" in done.stdout
