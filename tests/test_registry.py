"""Registry semantics: register/create/available, errors, origins (property-based)."""

from __future__ import annotations

import fnmatch
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import RegistryError, register, unregister

NAMES = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12)
KIND = "sampler"
PREFIX = "zz_test_"


def _make(name):
    class Thing:
        """A registered test thing."""

        def __init__(self, value=1):
            self.value = value

    Thing.__qualname__ = f"Thing_{name}"
    return Thing


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    for name in taming_core.available(KIND, PREFIX + "*"):
        unregister(KIND, name)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=8, unique=True), value=st.integers())
def test_register_create_roundtrip(names, value):
    for n in names:
        register(KIND, PREFIX + n)(_make(n))
    for n in names:
        obj = taming_core.create(KIND, PREFIX + n, value=value)
        assert obj.value == value and type(obj).__qualname__ == f"Thing_{n}"
        assert taming_core.get_entry(KIND, PREFIX + n).origin.startswith("local")
        assert taming_core.get_entry(KIND, PREFIX + n).description == "A registered test thing."
    listed = taming_core.available(KIND, PREFIX + "*")
    assert listed == sorted(PREFIX + n for n in names)
    for n in names:
        unregister(KIND, PREFIX + n)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=8, unique=True),
       pattern=st.text(alphabet="ab*?", min_size=1, max_size=4))
def test_available_matches_fnmatch(names, pattern):
    for n in names:
        register(KIND, PREFIX + n)(_make(n))
    got = taming_core.available(KIND, PREFIX + pattern)
    assert got == sorted(PREFIX + n for n in names if fnmatch.fnmatchcase(PREFIX + n, PREFIX + pattern))
    all_kinds = taming_core.available(None, PREFIX + pattern)
    assert all_kinds == sorted(f"{KIND}/{g}" for g in got) or all(
        k.split("/", 1)[1] in got for k in all_kinds if k.startswith(KIND + "/"))
    for n in names:
        unregister(KIND, PREFIX + n)


@settings(max_examples=40, deadline=None)
@given(name=NAMES)
def test_duplicate_registration_needs_override(name):
    a, b = _make(name), _make(name + "_other")
    register(KIND, PREFIX + name)(a)
    register(KIND, PREFIX + name)(a)  # the same object again is fine
    with pytest.raises(RegistryError, match="already registered.*override=True"):
        register(KIND, PREFIX + name)(b)
    register(KIND, PREFIX + name, override=True)(b)
    assert taming_core.get(KIND, PREFIX + name) is b
    unregister(KIND, PREFIX + name)


@settings(max_examples=40, deadline=None)
@given(name=NAMES)
def test_unknown_name_suggests_closest(name):
    register(KIND, PREFIX + name + "x")(_make(name))
    with pytest.raises(RegistryError) as err:
        taming_core.create(KIND, PREFIX + name + "y")
    assert f"'{PREFIX + name}x'" in str(err.value) and "did you mean" in str(err.value)
    unregister(KIND, PREFIX + name + "x")


def test_unknown_kind_suggests_closest():
    with pytest.raises(RegistryError, match="unknown component kind 'quantiser'.*'quantizer'"):
        taming_core.create("quantiser", "vq")
    with pytest.raises(RegistryError, match="unknown component kind"):
        register("nope", "x")


def test_register_rejects_bad_names_and_objects():
    with pytest.raises(RegistryError, match="non-empty string"):
        register(KIND, "")
    with pytest.raises(RegistryError, match="expected a class or function"):
        register(KIND, PREFIX + "obj")(42)


def test_factory_functions_register_too():
    @register(KIND, PREFIX + "factory")
    def factory(scale: int = 2):
        """Make a list."""
        return [scale]

    assert taming_core.create(KIND, PREFIX + "factory", scale=3) == [3]
    assert taming_core.get_entry(KIND, PREFIX + "factory").description == "Make a list."


def test_builtins_report_builtin_origin():
    entries = taming_core.entries()
    assert entries, "no built-in component registered"
    assert all(e.origin == "built-in" for e in entries if e.obj.__module__.startswith("taming_plugins"))


def test_create_from_spec_ignores_kind_and_applies_overrides():
    @register(KIND, PREFIX + "spec")
    class Spec:
        def __init__(self, a=0, b=0):
            self.a, self.b = a, b

    obj = taming_core.create_from_spec(KIND, {"kind": KIND, "name": PREFIX + "spec", "a": 1, "b": 2}, b=5)
    assert (obj.a, obj.b) == (1, 5)
    assert taming_core.spec_of(obj) == {"kind": KIND, "name": PREFIX + "spec", "a": 1, "b": 5}
