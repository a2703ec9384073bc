"""Third-party plugins discovered through the taming.plugins entry-point group."""

from __future__ import annotations

import json

import pytest

from plugin_env import plugin_env, run_cli, run_python

PROBE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import taming_core
    names = taming_core.available("quantizer")
    origin = {e.name: e.origin for e in taming_core.entries("quantizer")}
status = [(s.name, s.distribution, s.loaded, s.error) for s in taming_core.plugin_status()]
print(json.dumps({"names": names, "origin": origin, "status": status,
                  "warnings": [str(w.message) for w in caught if "taming plugin" in str(w.message)]}))
"""


def _probe(env):
    out = run_python(PROBE, env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_third_party_plugin_is_discovered_with_origin(tmp_path):
    info = _probe(plugin_env(tmp_path, ["taming_example_plugin"]))
    assert "frozen_random" in info["names"]
    assert info["origin"]["frozen_random"] == "taming-example-plugin 0.3.0"
    assert all(info["origin"][n] == "built-in" for n in info["names"] if n != "frozen_random")
    assert ["example", "taming-example-plugin", True, None] in info["status"]
    assert ["builtin", "taming", True, None] in info["status"]


def test_plugin_component_works_end_to_end(tmp_path):
    code = """
import torch, taming_core
q = taming_core.create("quantizer", "frozen_random", codebook_size=16, dim=4)
out = q(torch.randn(2, 4, 3, 3))
assert out.indices.shape == (2, 3, 3) and out.z_q.shape == (2, 4, 3, 3)
print("ok", out.metrics["usage"] > 0)
"""
    out = run_python(code, plugin_env(tmp_path, ["taming_example_plugin"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok True"


def test_broken_plugin_is_isolated(tmp_path):
    info = _probe(plugin_env(tmp_path, ["taming_example_plugin", "taming_broken_plugin"]))
    assert "frozen_random" in info["names"] and "vq" in info["names"]
    broken = [s for s in info["status"] if s[0] == "broken"]
    assert broken and broken[0][1] == "taming-broken-plugin" and broken[0][2] is False
    assert "RuntimeError: this plugin is broken on purpose" in broken[0][3]
    assert len(info["warnings"]) == 1
    assert "'broken'" in info["warnings"][0] and "taming-broken-plugin" in info["warnings"][0]


def test_cli_lists_failed_plugin(tmp_path):
    env = plugin_env(tmp_path, ["taming_example_plugin", "taming_broken_plugin"])
    out = run_cli(["plugins", "--kind", "quantizer"], env)
    assert out.returncode == 0, out.stderr
    assert "frozen_random" in out.stdout and "taming-example-plugin 0.3.0" in out.stdout
    assert "broken (taming_broken_plugin) from taming-broken-plugin 1.0.0: FAILED: RuntimeError" in out.stdout


def test_disable_switch_and_explicit_load(tmp_path):
    env = plugin_env(tmp_path, ["taming_example_plugin"], TAMING_DISABLE_PLUGIN_AUTOLOAD="1")
    code = """
import taming_core
before = taming_core.available("quantizer")
taming_core.load_plugins(["example"])
after = taming_core.available("quantizer")
print(before, after)
try:
    taming_core.load_plugins(["nope"])
except taming_core.PluginError as e:
    print("error:", e)
"""
    out = run_python(code, env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("[] ['frozen_random']")
    assert "no 'taming.plugins' entry point named 'nope'" in lines[1]


@pytest.mark.parametrize("kind", ["quantizer", None])
def test_cli_plugins_lists_builtins(kind):
    from taming_plugins.cli import main

    args = ["plugins"] + (["--kind", kind] if kind else [])
    assert main(args) == 0
