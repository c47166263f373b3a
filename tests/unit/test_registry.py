"""The one registry type: duplicates refused, order kept, unknown names answered in one line."""

from __future__ import annotations

import pytest

from calmerge.errors import ConfigError, DataError
from calmerge.registry import Registry


def test_registration_order_is_kept_and_lookup_returns_the_entry():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)

    @reg.register("a")
    def one():
        return 1

    assert reg.names() == ("b", "a") and list(reg) == ["b", "a"] and len(reg) == 2
    assert reg.get("a") is one and "b" in reg and "c" not in reg
    assert reg.items() == [("b", 2), ("a", one)]


def test_a_second_registration_of_a_name_is_refused():
    reg: Registry[int] = Registry("widget")
    reg.add("x", 1)
    with pytest.raises(ValueError, match="widget 'x' is registered twice"):
        reg.add("x", 2)
    assert reg.get("x") == 1


def test_unknown_name_is_one_line_with_did_you_mean_or_the_choices():
    reg: Registry[int] = Registry("widget", error=DataError)
    reg.add("linear", 1)
    reg.add("slerp", 2)
    with pytest.raises(DataError) as err:
        reg.get("lineer")
    assert err.value.one_line() == "unknown widget 'lineer' (hint: did you mean 'linear'?)"
    with pytest.raises(DataError) as err:
        reg.check("zzz")
    assert err.value.hint == "choose from linear, slerp"
    assert reg.check("slerp") == "slerp"


def test_the_real_registries_are_registries():
    from calmerge.analysis.pick import PICK_RULES
    from calmerge.eval.data.sources import _SOURCES
    from calmerge.eval.metrics import METRICS
    from calmerge.merge.families import FAMILIES
    from calmerge.merge.methods import METHODS

    for reg in (PICK_RULES, _SOURCES, METRICS, FAMILIES, METHODS):
        assert isinstance(reg, Registry) and len(reg) >= 3
    # every λ-family runs a registered merge method
    assert all(f.method in METHODS for f in FAMILIES.values())
    with pytest.raises(ConfigError):
        FAMILIES.get("soup")  # a method, but not a family between two models
