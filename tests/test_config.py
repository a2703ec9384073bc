"""taming_core.build: nested component specs from dicts and YAML/JSON files."""

from __future__ import annotations

import json

import pytest

import taming_core
from taming_core import ConfigError, build, register, unregister


class Inner:
    """Inner test component."""

    def __init__(self, size: int, scale: float = 1.0):
        self.size, self.scale = size, scale


class Outer:
    """Outer test component holding an inner one."""

    def __init__(self, quantizer, depth: int = 1, extra=None, parts=()):
        self.quantizer, self.depth, self.extra, self.parts = quantizer, depth, extra, parts


@pytest.fixture(autouse=True)
def _components():
    register("quantizer", "zz_inner")(Inner)
    register("tokenizer", "zz_outer")(Outer)
    register("perceptual", "zz_loss")(Inner)  # built below through the alias kind "loss"
    yield
    unregister("quantizer", "zz_inner")
    unregister("tokenizer", "zz_outer")
    unregister("perceptual", "zz_loss")


CFG = {"tokenizer": {"name": "zz_outer", "depth": 3,
                     "quantizer": {"name": "zz_inner", "size": 8},
                     "extra": {"kind": "loss", "name": "zz_loss", "size": 2},
                     "parts": [{"kind": "quantizer", "name": "zz_inner", "size": 1}, {"plain": 1}]}}


def _check(built):
    tok = built["tokenizer"]
    assert isinstance(tok, Outer) and tok.depth == 3
    assert isinstance(tok.quantizer, Inner) and tok.quantizer.size == 8
    assert isinstance(tok.extra, Inner) and tok.extra.size == 2
    assert isinstance(tok.parts[0], Inner) and tok.parts[1] == {"plain": 1}


def test_build_from_dict():
    _check(build(CFG))


def test_build_from_yaml_and_json(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CFG))
    (tmp_path / "c.json").write_text(json.dumps(CFG))
    _check(build(tmp_path / "c.yaml"))
    _check(build(str(tmp_path / "c.json")))


def test_build_single_component_with_kind():
    q = build({"kind": "quantizer", "name": "zz_inner", "size": 4})
    assert isinstance(q, Inner) and q.size == 4
    with pytest.raises(ConfigError, match="needs a 'kind' key"):
        build({"name": "zz_inner", "size": 4})


@pytest.mark.parametrize("cfg, message", [
    ({"tokenizer": {"name": "zz_outer", "quantizer": {"name": "zz_innr", "size": 1}}},
     r"^tokenizer\.quantizer\.name: unknown quantizer 'zz_innr'; did you mean 'zz_inner'"),
    ({"tokenizer": {"name": "zz_outer", "quantizer": {"name": "zz_inner", "sise": 1}}},
     r"^tokenizer\.quantizer\.sise: unknown argument; Inner accepts size, scale"),
    ({"tokenizer": {"name": "zz_outer", "quantizer": {"name": "zz_inner"}}},
     r"^tokenizer\.quantizer: missing required argument 'size'"),
    ({"tokenizer": {"name": "zz_outer", "quantizer": {"name": 3}}},
     r"^tokenizer\.quantizer\.name: expected a registered name"),
    ({"tokenizer": {"name": "zz_outer", "quantizer": 1, "extra": {"kind": "lossy", "name": "x"}}},
     r"^tokenizer\.extra\.kind: unknown component kind 'lossy'"),
])
def test_bad_configs_name_the_key_path(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build(cfg)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        build(tmp_path / "list.yaml")


def test_constructor_errors_are_wrapped_with_path():
    class Picky:
        def __init__(self, size: int):
            if size < 0:
                raise ValueError("size must be >= 0")

    register("quantizer", "zz_picky")(Picky)
    try:
        with pytest.raises(ConfigError, match=r"^quantizer: quantizer 'zz_picky' rejected its arguments: size must be >= 0"):
            build({"quantizer": {"name": "zz_picky", "size": -1}})
    finally:
        unregister("quantizer", "zz_picky")


def test_build_is_the_same_as_create_for_builtins():
    names = taming_core.available("quantizer")
    assert names, "built-in quantizers must be registered"


def test_merge_configs_merges_sections_but_replaces_specs():
    from taming_core.config import merge_configs

    base = {"train": {"steps": 10, "lr": 1}, "quantizer": {"name": "vq", "codebook_size": 8}}
    out = merge_configs(base, {"train": {"steps": 20}, "quantizer": {"name": "ema", "dim": 4}})
    assert out == {"train": {"steps": 20, "lr": 1}, "quantizer": {"name": "ema", "dim": 4}}
    assert base["train"]["steps"] == 10  # the base is not modified
