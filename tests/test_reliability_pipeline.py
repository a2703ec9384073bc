"""Issue 12, "silent acceptance" and "plugin outputs at the boundary": the pipeline
refuses what it used to accept without a word."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import taming_core
from taming_core import CheckpointError, ConfigError, Pipeline, ValidationError
from taming_core.pipeline import CONFIG_FILE, WEIGHTS_FILE, config_sha256
from taming_core.validation import check_cond_offset

from _reliability import CODES, CONFIG, TOKENIZER, config, pipeline


# --------------------------------------------------------------------------- conditions
def test_condition_on_a_conditioner_that_takes_none_is_refused():
    pipe = pipeline()
    assert pipe.conditioner.takes_condition is False
    with pytest.raises(ValidationError, match=r"conditioner 'sos' .* takes no condition"):
        pipe.generate(2, condition=torch.tensor([3, 4]), seed=0)
    assert pipe.generate(2, seed=0).shape == (2, 3, 4, 4)  # no condition: fine


def test_class_label_conditioner_still_takes_a_condition():
    cfg = config(conditioner={"name": "class_label", "num_classes": 3},
                 prior={**CONFIG["prior"], "vocab_size": CODES + 4})
    pipe = Pipeline.from_config(cfg)
    assert pipe.conditioner.takes_condition is True
    assert pipe.generate(2, condition=torch.tensor([0, 2]), seed=0).shape == (2, 3, 4, 4)


def test_colliding_cond_offset_is_refused():
    with pytest.raises(ValidationError, match="collide with image ids"):
        pipeline(cond_offset=3)
    with pytest.raises(ValidationError, match="exceed the prior's vocabulary"):
        pipeline(cond_offset=CODES + 1)  # the SOS id would be 17 in a 17-id prior
    assert pipeline(cond_offset=CODES).cond_offset == CODES
    assert pipeline(cond_offset=0).cond_offset == 0  # the original's shared layout


@settings(max_examples=200, deadline=None)
@given(image=st.integers(1, 50), cond=st.integers(1, 20), offset=st.integers(0, 120),
       prior=st.integers(1, 120))
def test_cond_offset_rule(image, cond, offset, prior):
    """Property: accepted exactly when the layout is shared (0) or disjoint (>= image
    vocabulary) and every condition id is inside the prior's vocabulary."""
    ok = (offset == 0 or offset >= image) and offset + cond <= prior
    try:
        check_cond_offset(offset, image, cond, "cond_offset", prior)
    except ValidationError:
        assert not ok
    else:
        assert ok


def test_vocab_layout_refuses_collisions():
    from taming_plugins.conditioning.layout import VocabLayout

    with pytest.raises(ValidationError, match="collide"):
        VocabLayout(64, 10, cond_offset=5)
    assert VocabLayout(64, 10, cond_offset=0).prior_vocab_size == 64


# --------------------------------------------------------------------------- strings for lists
def test_string_where_a_list_is_expected_is_refused_everywhere():
    bad = {**TOKENIZER, "attn_resolutions": "16"}
    with pytest.raises(ConfigError, match=r"tokenizer\.attn_resolutions: expected a list, got the string '16'"):
        taming_core.build({"tokenizer": bad})
    with pytest.raises(ConfigError, match=r"tokenizer\.attn_resolutions: expected a list"):
        taming_core.create("tokenizer", "vqgan", **{k: v for k, v in bad.items() if k != "name"})
    with pytest.raises(ConfigError, match="expected a list"):
        Pipeline.from_config(config(tokenizer=bad))
    with pytest.raises(ConfigError, match=r"quantizer\.levels: expected a list"):
        taming_core.create("quantizer", "fsq", levels="855")
    # constructing the class directly is refused too (not read as [1, 6])
    cls = taming_core.get("tokenizer", "vqgan")
    with pytest.raises(ValidationError, match=r"vqgan\(attn_resolutions\)"):
        cls(**{k: v for k, v in bad.items() if k != "name"})


@settings(max_examples=30, deadline=None)
@given(st.text(alphabet="0123456789, []", min_size=1, max_size=6))
def test_any_string_for_a_sequence_argument_is_a_config_error(text):
    """Property: a string is never taken as a list of its characters."""
    with pytest.raises(ConfigError, match="expected a list, got the string"):
        taming_core.create("quantizer", "fsq", levels=text)


# --------------------------------------------------------------------------- pipeline.json checks
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    pipe = pipeline()
    pipe.save(d)
    return d


def _copy(saved, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (out / name).write_bytes((saved / name).read_bytes())
    return out


def test_saved_config_records_hashes_and_provenance(saved):
    cfg = json.loads((saved / CONFIG_FILE).read_text())
    assert set(cfg["integrity"]) == {"config_sha256", "weights_sha256"}
    prov = cfg["provenance"]
    assert prov["tokenizer"]["name"] == "vqgan" and prov["tokenizer"]["distribution"] == "taming"
    assert prov["tokenizer"]["version"]
    assert prov["tokenizer.quantizer"] == {**prov["tokenizer.quantizer"], "kind": "quantizer",
                                           "name": "vq", "distribution": "taming"}
    assert {"prior", "sampler", "conditioner"} <= set(prov)
    Pipeline.load(saved)


@pytest.mark.parametrize("edit", [("prior", "n_head", 1), ("prior", "n_head", 4),
                                  ("cond_offset", None, 0)])
def test_shape_keeping_edits_of_the_model_config_are_detected(saved, tmp_path, edit):
    d = _copy(saved, tmp_path)
    cfg = json.loads((d / CONFIG_FILE).read_text())
    role, key, value = edit
    if key is None:
        cfg[role] = value
    else:
        cfg[role][key] = value
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config_sha256 mismatch"):
        Pipeline.load(d)
    Pipeline.load(d, verify=False)  # the escape hatch loads it (the shapes still fit)


def test_sampling_settings_may_be_edited(saved, tmp_path):
    d = _copy(saved, tmp_path)
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["sampler"]["top_k"] = 2
    cfg["grid"] = [1, 2]
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    pipe = Pipeline.load(d)
    assert pipe.grid == (1, 2) and pipe.sampler.options.top_k == 2


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_any_flipped_byte_in_the_weights_is_detected(saved, tmp_path_factory, data):
    """Property: flipping any bit of pipeline.safetensors fails the SHA-256 check."""
    blob = bytearray((saved / WEIGHTS_FILE).read_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    d = tmp_path_factory.mktemp("flip")
    (d / CONFIG_FILE).write_bytes((saved / CONFIG_FILE).read_bytes())
    blob[pos] ^= 1 << bit
    (d / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        Pipeline.load(d)


def test_verify_false_skips_the_weights_hash(saved, tmp_path):
    d = _copy(saved, tmp_path)
    blob = bytearray((d / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0x01  # the last byte of the last tensor's data: still a readable file
    (d / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="verify=False"):
        Pipeline.load(d)
    Pipeline.load(d, verify=False)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["tokenizer", "prior", "conditioner", "cond_offset", "sampler", "grid"]),
       value=st.one_of(st.integers(0, 10), st.text(max_size=3)))
def test_config_hash_covers_exactly_the_model_keys(key, value):
    """Property: changing a model key changes the hash; sampler and grid do not count."""
    base = json.loads(json.dumps({**CONFIG, "cond_offset": CODES}))
    changed = {**base, key: {"edited": value}}
    assert (config_sha256(changed) != config_sha256(base)) == (key not in ("sampler", "grid"))


def test_pipeline_json_that_is_not_a_mapping(tmp_path):
    for text in ("[1, 2]", "3", '"x"', "null"):
        (tmp_path / CONFIG_FILE).write_text(text)
        with pytest.raises(CheckpointError, match="expected a JSON object") as err:
            Pipeline.load(tmp_path)
        assert "\n" not in str(err.value)


def test_pipeline_json_that_is_not_utf8(tmp_path):
    (tmp_path / CONFIG_FILE).write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(CheckpointError, match="not UTF-8"):
        Pipeline.load(tmp_path)


# --------------------------------------------------------------------------- image entry checks
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_another_float_dtype_are_cast(dtype):
    pipe = pipeline().eval()
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    want, _ = pipe.reconstruct(x)
    got, enc = pipe.reconstruct(x.to(dtype))
    assert got.dtype == torch.float32 and enc.indices.dtype == torch.long
    assert pipe.tokenize(x.to(dtype)).shape == (2, 2, 2)
    if dtype == torch.float64:
        torch.testing.assert_close(got, want)
    enc = pipe.tokenizer.encode(x.to(dtype))  # the tokenizer itself casts too
    assert enc.indices.shape == (2, 2, 2)


def test_nan_pixels_are_the_images_fault():
    pipe = pipeline()
    x = torch.zeros(1, 3, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValidationError, match=r"^reconstruct\(images\): contains NaN"):
        pipe.reconstruct(x)
    with pytest.raises(ValidationError, match=r"^tokenize\(images\): contains NaN"):
        pipe.tokenize(x)
    with pytest.raises(ValidationError, match=r"^vqgan\.encode\(images\): contains NaN"):
        pipe.tokenizer.encode(x)  # not vq(z)


def test_images_smaller_than_the_downsample_factor():
    pipe = pipeline()
    with pytest.raises(ValidationError, match="smaller than the downsample factor 2"):
        pipe.reconstruct(torch.zeros(1, 3, 1, 4))


# --------------------------------------------------------------------------- component outputs
class _FloatIndices(taming_core.Quantizer):
    """Wraps vq but returns float (or flat) indices, as a careless plugin might."""

    def __init__(self, flat: bool = False):
        super().__init__()
        self.inner = taming_core.create("quantizer", "vq", codebook_size=CODES, dim=4)
        self.flat = flat

    @property
    def codebook_size(self):
        return CODES

    def forward(self, z):
        out = self.inner(z)
        idx = out.indices.reshape(-1) if self.flat else out.indices.float()
        return taming_core.QuantizerOutput(out.z_q, idx, out.loss, out.metrics)

    def decode_indices(self, indices):
        return self.inner.decode_indices(indices)


@pytest.mark.parametrize("flat", [False, True])
def test_quantizer_output_is_checked_where_the_tokenizer_consumes_it(flat):
    taming_core.register("quantizer", "test_rel_bad_indices")(_FloatIndices)
    try:
        tok = taming_core.create("tokenizer", "vqgan", **{
            **{k: v for k, v in TOKENIZER.items() if k != "name"},
            "quantizer": {"name": "test_rel_bad_indices", "flat": flat}})
        pipe = Pipeline(tok)
        with pytest.raises(ValidationError, match=r"quantizer 'test_rel_bad_indices' \(_FloatIndices\) "
                           r"returned indices .*expected an integer \(Long\) tensor of shape 1×2×2"):
            pipe.tokenize(torch.zeros(1, 3, 4, 4))
    finally:
        taming_core.unregister("quantizer", "test_rel_bad_indices")


class _WrongShapeSampler(taming_core.Sampler):
    def __init__(self, transpose: bool = True):
        self.transpose = transpose

    def sample(self, prior, grid=(2, 2), *, batch_size=1, condition=None, generator=None):
        h, w = grid
        return torch.zeros(batch_size, w + 1, h, dtype=torch.long) if self.transpose else \
            torch.full((batch_size, h, w), CODES + 5, dtype=torch.long)


def test_sampler_output_is_checked_where_the_pipeline_consumes_it():
    taming_core.register("sampler", "test_rel_wrong_shape")(_WrongShapeSampler)
    try:
        pipe = pipeline()
        bad = taming_core.create("sampler", "test_rel_wrong_shape")
        with pytest.raises(ValidationError, match=r"sampler 'test_rel_wrong_shape' \(_WrongShapeSampler\) "
                           r"returned torch.int64 of shape \(2, 3, 2\); expected .* 2×2×2"):
            pipe.generate(2, sampler=bad)
        out_of_range = taming_core.create("sampler", "test_rel_wrong_shape", transpose=False)
        with pytest.raises(ValidationError, match=r"sampler 'test_rel_wrong_shape' .* output: values "
                           r"must lie in \[0, 15\]"):
            pipe.generate(2, sampler=out_of_range)
    finally:
        taming_core.unregister("sampler", "test_rel_wrong_shape")


DTYPES = [torch.long, torch.int32, torch.int16, torch.uint8, torch.float32, torch.float16, torch.bool]


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(DTYPES), b=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       shape=st.sampled_from(["right", "flat", "transposed", "extra"]))
def test_boundary_checks_accept_exactly_integer_grids_of_the_right_shape(dtype, b, h, w, shape):
    """Property: quantizer indices and sampler grids pass iff integer (not bool) and
    shaped B×H×W; anything else is a ValidationError naming the component."""
    from taming_core.validation import check_quantizer_output, check_token_grid

    want = (b, h, w)
    got = {"right": want, "flat": (b * h * w,), "transposed": (b, w, h + 1),
           "extra": (b, h, w, 2)}[shape]
    idx = torch.zeros(got, dtype=dtype)
    ok = shape == "right" and dtype not in (torch.float32, torch.float16, torch.bool)
    z = torch.zeros(b, 4, h, w)
    q = taming_core.create("quantizer", "vq", codebook_size=CODES, dim=4)
    out = taming_core.QuantizerOutput(z, idx, z.new_zeros(()))
    sampler = taming_core.create("sampler", "autoregressive")
    for check in (lambda: check_quantizer_output(out, z, q),
                  lambda: check_token_grid(idx, b, (h, w), sampler)):
        if ok:
            check()
        else:
            with pytest.raises(ValidationError, match=r"^(quantizer 'vq'|sampler 'autoregressive')"):
                check()
