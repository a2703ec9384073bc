"""Issue 12, "plugin outputs at the boundary": overrides warn, failed plugins leave
nothing behind, pipelines record and name the distributions of their components, and
chosen plugins load with autoload off."""

from __future__ import annotations

import json
import warnings

import pytest

import taming_core
from taming_core import registry

from plugin_env import plugin_env, run_python


# --------------------------------------------------------------------------- override
class _LocalVQ:
    """A local stand-in for the built-in vq."""


class _LocalVQ2:
    """Another local one."""


@pytest.fixture
def restore_vq():
    entry = taming_core.get_entry("quantizer", "vq")
    yield
    registry._REGISTRY["quantizer"]["vq"] = entry


def test_override_of_another_distributions_component_warns(restore_vq):
    with pytest.warns(RuntimeWarning, match=r"quantizer 'vq' of built-in is replaced by .*_LocalVQ "
                      r"of local \(.*\) \(override=True\)"):
        taming_core.register("quantizer", "vq", override=True)(_LocalVQ)
    assert taming_core.get("quantizer", "vq") is _LocalVQ
    with warnings.catch_warnings():  # the same provider replacing its own: silent
        warnings.simplefilter("error")
        taming_core.register("quantizer", "vq", override=True)(_LocalVQ2)


def test_entries_record_distribution_and_version():
    entry = taming_core.get_entry("quantizer", "vq")
    assert entry.distribution == "taming" and entry.version and entry.origin == "built-in"


# --------------------------------------------------------------------------- subprocesses
# Each subprocess imports torch (seconds on a busy machine), so each one checks several
# things: A saves a pipeline with a plugin's component and probes a half-broken plugin;
# B loads that pipeline with the plugin not loaded, then loaded; C runs the CLI.

SAVE_AND_PROBE = """
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import taming_core
    samplers = taming_core.available("sampler")
    vq = taming_core.get_entry("quantizer", "vq")
status = {s.name: [s.loaded, s.error] for s in taming_core.plugin_status()}
tok = {"name": "vqgan", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
       "z_channels": 32, "resolution": 16, "embed_dim": 4,
       "quantizer": {"name": "frozen_random", "codebook_size": 16, "dim": 4}}
taming_core.Pipeline.from_config({"tokenizer": tok}).save(sys.argv[1])
print(json.dumps({"samplers": samplers, "vq_origin": vq.origin, "vq_obj": vq.obj.__module__,
                  "status": status}))
"""

# B: the example and the broken plugin installed, autoload off, only the built-ins chosen
# (TAMING_PLUGINS): load the pipeline (its plugin not loaded), run the CLI with and
# without --plugins, then load the pipeline again (the plugin now loaded).
LOAD_AND_CLI = """
import contextlib, io, json, sys
import taming_core
from taming_plugins.cli import main

def load():
    try:
        pipe = taming_core.Pipeline.load(sys.argv[1])
        return "loaded " + type(pipe.tokenizer.quantize).__name__
    except taming_core.CheckpointError as exc:
        return "error: " + str(exc)

before = load()
runs = []
for args in (["plugins", "--kind", "quantizer"], ["--plugins", "nope", "plugins"],
             ["--plugins", "broken", "plugins"], ["--plugins", "example", "plugins", "--kind", "quantizer"]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    runs.append([rc, out.getvalue(), err.getvalue()])
print(json.dumps({"before": before, "runs": runs, "after": load()}))
"""


def _json(code: str, env: dict, *argv: str):
    out = run_python(f"import sys; sys.argv = ['x', *{list(argv)!r}]\n" + code, env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved_with_plugin(tmp_path_factory):
    """(pipeline directory, probe of a process with the example and half-broken plugins)."""
    tmp = tmp_path_factory.mktemp("plugins")
    env = plugin_env(tmp / "site", ["taming_example_plugin", "taming_halfbroken_plugin"])
    info = _json(SAVE_AND_PROBE, env, str(tmp / "pipe"))
    return tmp / "pipe", info


def test_a_plugin_that_fails_while_loading_leaves_no_registrations(saved_with_plugin):
    _, info = saved_with_plugin
    assert "half_registered" not in info["samplers"] and "autoregressive" in info["samplers"]
    assert info["vq_origin"] == "built-in" and info["vq_obj"].startswith("taming_plugins.")
    loaded, error = info["status"]["halfbroken"]
    assert loaded is False and "ImportError: this plugin fails after registering" in error
    assert "sampler/half_registered" in error  # says what was undone
    assert info["status"]["example"] == [True, None]


@pytest.fixture(scope="module")
def autoload_off(saved_with_plugin, tmp_path_factory):
    pipe_dir, _ = saved_with_plugin
    env = plugin_env(tmp_path_factory.mktemp("site_off"), ["taming_example_plugin", "taming_broken_plugin"],
                     TAMING_DISABLE_PLUGIN_AUTOLOAD="1", TAMING_PLUGINS="builtin")
    return _json(LOAD_AND_CLI, env, str(pipe_dir))


def test_pipeline_records_and_names_the_distribution_of_a_missing_plugin(saved_with_plugin, autoload_off):
    pipe_dir, _ = saved_with_plugin
    prov = json.loads((pipe_dir / "pipeline.json").read_text())["provenance"]
    assert prov["tokenizer.quantizer"] == {
        "kind": "quantizer", "name": "frozen_random", "distribution": "taming-example-plugin",
        "version": "0.3.0", "origin": "taming-example-plugin 0.3.0"}
    missing = autoload_off["before"]  # installed but not loaded: autoload off, built-ins only
    assert missing.startswith("error: ") and "\n" not in missing
    assert "tokenizer.quantizer: quantizer 'frozen_random' is not registered" in missing
    assert "'taming-example-plugin' (version 0.3.0)" in missing
    assert "pip install 'taming-example-plugin==0.3.0'" in missing and "TAMING_PLUGINS" in missing
    assert autoload_off["after"] == "loaded FrozenRandomQuantizer"  # after --plugins example


def test_cli_loads_chosen_plugins_with_autoload_off(autoload_off):
    plain, nope, broken, chosen = autoload_off["runs"]
    assert plain[0] == 0 and "frozen_random" not in plain[1]
    for rc, _, err in (nope, broken):
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "no 'taming.plugins' entry point named 'nope'" in nope[2]
    assert "--plugins: plugin 'broken' from taming-broken-plugin 1.0.0 failed to load" in broken[2]
    assert chosen[0] == 0, chosen[2]
    assert "frozen_random" in chosen[1] and "taming-example-plugin 0.3.0" in chosen[1]
