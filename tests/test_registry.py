"""harness.registry: lookups that fail helpfully, descriptions, discovery on first use. (`harness list`, which prints
them: tests/cli/test_list.py.)"""

import pytest

from harness.registry import QUANTIZERS, Registry, RegistryError

SHIPPED = {"nf4", "fp4", "fp4_e3m0", "int4", "int8", "intk"}


def test_every_shipped_quantizer_is_discovered():
    assert SHIPPED <= set(QUANTIZERS.names())


TYPOS = [("nf5", "nf4"), ("NF4", "nf4"), ("fp4e3m0", "fp4_e3m0"), ("int_8", "int8")]


@pytest.mark.parametrize("typo,closest", TYPOS)
def test_a_failed_lookup_lists_the_names_and_suggests_the_closest(typo, closest):
    with pytest.raises(RegistryError) as info:
        QUANTIZERS.get(typo)
    message = str(info.value)
    assert f"unknown quantizer {typo!r}" in message
    assert f"Did you mean {closest!r}?" in message
    assert all(name in message for name in QUANTIZERS.names())
    assert isinstance(info.value, KeyError)  # callers that catch KeyError keep working


def test_a_name_like_nothing_gets_no_suggestion():
    with pytest.raises(RegistryError, match="unknown quantizer 'qqqqqqqq'. Registered quantizers: ") as info:
        QUANTIZERS.get("qqqqqqqq")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("entry", list(QUANTIZERS), ids=lambda e: e.name)
def test_every_quantizer_has_a_description_and_builds_with_defaults(entry):
    assert entry.description.strip()
    config = entry.obj()
    # the YAMLs select a schema by this name, and errors name the quantizer by it
    assert config.name == entry.name
    assert config.build().name == entry.name


def test_registering_needs_a_description_and_a_unique_name():
    registry = Registry("widget")
    registry.register("a", "the first")(object)
    with pytest.raises(ValueError, match="widget 'b' needs a one-line description"):
        registry.add("b", object(), "")
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        registry.add("a", int, "another")
    registry.add("a", object, "the same object again is fine")  # re-import of the same module


def test_an_empty_registry_says_so():
    with pytest.raises(RegistryError, match=r"Registered widgets: \(none\)"):
        Registry("widget").get("x")
