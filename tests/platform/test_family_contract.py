"""Every registered family meets the family contract, and the registry is consistent with
itself and with what every list of names is derived from."""

from __future__ import annotations

import pytest

from darkroom.platform.families import fullsize_families, pipeline_families, registered
from darkroom.platform.models.names import registry_names
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SAMPLERS
from tests.platform.family_contract import FamilyContract


class TestEveryFamily(FamilyContract):
    @pytest.fixture(params=sorted(registered()))
    def family(self, request):
        return registered()[request.param]


def test_the_registry_is_consistent():
    families = registered()
    assert {"sd", "sdxl", "dit", "controlnet", "sd3", "flux", "t2i"} <= set(families)
    names = registry_names()
    for name, family in families.items():
        assert family.name == name and f"tiny:{name}" in names
        assert family.description and callable(family.call) and callable(family.tiny)
        assert set(family.unfit) <= set(SAMPLERS)
        assert family.samplers in ("diffusion", "flow", "any")
        for option in family.options:
            assert option in ModelSpec.model_fields, (name, option)
        assert family.conditioning.sources
        if family.pipeline:
            assert pipeline_families()[family.pipeline] == name
    for entry, family in fullsize_families().items():
        assert f"random:{entry}" in names and family in families
    # the spec's `family` field takes exactly the registered names
    ModelSpec(model="x/y", family="flux")
    with pytest.raises(ValueError, match="unknown model family"):
        ModelSpec(model="x/y", family="fluxx")
