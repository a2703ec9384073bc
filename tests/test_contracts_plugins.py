"""Third-party components written only against ``taming_core``'s declared contracts.

* ``tests/plugin_pkgs/taming_contract_plugin`` (a tokenizer, a prior, a conditioner, no
  import of ``taming_plugins``) is installed through its entry point and trained under
  both stages: the stage-1 trainer for the tokenizer, the stage-2 trainer for the prior
  with the conditioner; the trained parts then make a Pipeline that samples, saves and
  loads.
* both packages' components pass the contract-check kit; the worked example of
  docs/plugins.md (``tests/plugin_pkgs/taming_example_plugin``) runs its own tests,
  which call the kit (in this process, to spare a second interpreter start).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plugin_env import PLUGIN_PKGS, plugin_env

TRAIN_BOTH_STAGES = r"""
import json, sys
from pathlib import Path

import torch

import taming_core
from taming_plugins.training.stage1 import TokenizerTrainer
from taming_plugins.training.stage2 import PriorTrainer

out = Path(sys.argv[1])
origins = {f"{e.kind}/{e.name}": e.origin for e in taming_core.entries()
           if e.origin.startswith("taming-contract-plugin")}
stage1 = TokenizerTrainer({
    "tokenizer": {"name": "patch_vq", "codebook_size": 16, "dim": 8},
    "loss": {"name": "vqgan", "disc_start": 1, "perceptual": None,
             "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 1}},
    "data": {"train": "photos", "image_size": 16, "batch_size": 2, "train_kwargs": {"length": 16},
             "val_kwargs": {"length": 4}, "val_batches": 1},
    "optim": {"learning_rate": 1e-3},
    "train": {"steps": 3, "log_every": 1, "val_every": 3, "image_every": 3, "ckpt_every": 3,
              "progress": False, "device": "cpu", "out": str(out / "stage1")}}).fit()
stage2 = PriorTrainer({
    "out_dir": str(out / "stage2"), "tokenizer": str(out / "stage1"), "data": "photos",
    "image_size": 16, "data_kwargs": {"length": 8}, "prior": {"name": "causal_conv"},
    "conditioner": {"name": "brightness"}, "cfg_drop": 0.5, "steps": 3, "batch_size": 4,
    "log_every": 1, "ckpt_every": 3, "sample_every": 3, "num_samples": 2, "progress": False,
    "device": "cpu"})
last = stage2.fit().metrics
sampler = taming_core.create("sampler", stage2.prior.default_sampler,
                             vocab_limit=stage2.tokenizer.vocab_size)
pipe = taming_core.Pipeline(stage2.tokenizer, stage2.prior, sampler, stage2.conditioner,
                            cond_offset=stage2.layout.cond_offset, grid=(8, 8))
images = torch.rand(2, 3, 16, 16) * 2 - 1
first = pipe.generate(2, condition=images, seed=3)
pipe.save(out / "pipeline")
again = taming_core.Pipeline.load(out / "pipeline").generate(2, condition=images, seed=3)
print("RESULT", json.dumps({
    "origins": origins, "stage1_step": stage1.step,
    "stage1_losses": [m["total_loss"] for m in stage1.train_metrics],
    "stage1_checkpoint": str(stage1.last_checkpoint), "stage2_step": stage2.step,
    "stage2_loss": last.get("loss"), "stage2_files": sorted(p.name for p in (out / "stage2").iterdir()),
    "samples_shape": list(first.shape), "reloaded_equal": bool(torch.equal(first, again))}))
"""

def test_contract_plugin_trains_under_both_stages(tmp_path: Path) -> None:
    env = plugin_env(tmp_path / "site", ["taming_contract_plugin"])
    proc = subprocess.run([sys.executable, "-c", TRAIN_BOTH_STAGES, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["origins"] == {"tokenizer/patch_vq": "taming-contract-plugin 0.1.0",
                                 "prior/causal_conv": "taming-contract-plugin 0.1.0",
                                 "conditioner/brightness": "taming-contract-plugin 0.1.0"}
    assert result["stage1_step"] == 3 and len(result["stage1_losses"]) == 3
    assert all(torch.isfinite(torch.tensor(result["stage1_losses"])))
    assert Path(result["stage1_checkpoint"]).name.startswith("step_")
    assert result["stage2_step"] == 3 and torch.isfinite(torch.tensor(result["stage2_loss"]))
    assert "metrics.jsonl" in result["stage2_files"]
    assert result["samples_shape"] == [2, 3, 16, 16] and result["reloaded_equal"]


@pytest.fixture
def imported_plugins():
    """Both plugin packages imported in this process (registered with a local origin);
    their registrations and modules are removed afterwards."""
    import taming_core

    before = {(e.kind, e.name) for e in taming_core.entries()}
    paths = [str(PLUGIN_PKGS / p) for p in ("taming_example_plugin", "taming_contract_plugin")]
    sys.path[:0] = paths
    try:
        yield
    finally:
        del sys.path[:len(paths)]
        for entry in taming_core.entries():
            if (entry.kind, entry.name) not in before:
                taming_core.unregister(entry.kind, entry.name)
        for name in [m for m in sys.modules if m.split(".")[0] in
                     ("taming_example_plugin", "taming_contract_plugin", "test_example_plugin")]:
            del sys.modules[name]


def test_contract_plugin_components_meet_their_contracts(imported_plugins) -> None:
    from taming_core.testing import check_conditioner, check_prior, check_tokenizer
    from taming_contract_plugin import BrightnessConditioner, CausalConvPrior, PatchVQTokenizer

    assert "state_dict_round_trip" in check_tokenizer(PatchVQTokenizer)
    assert "cache_equals_forward" in check_prior(lambda: CausalConvPrior(vocab_size=21, block_size=17))
    assert "null_condition" in check_conditioner(BrightnessConditioner, torch.rand(3, 3, 8, 8) * 2 - 1)


def test_worked_example_plugin_passes_its_own_tests(imported_plugins) -> None:
    """The plugin's tests (docs/plugins.md shows them), as its author runs them."""
    import importlib.util

    path = PLUGIN_PKGS / "taming_example_plugin" / "tests" / "test_example_plugin.py"
    spec = importlib.util.spec_from_file_location("test_example_plugin", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    assert len(tests) == 3
    for test in tests:
        test()
