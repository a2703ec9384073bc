"""Issue 12: images of every mode Pillow opens decode to the right range; folders
without a readable image say why."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from taming_core import ValidationError
from taming_plugins.data import ImageFolder
from taming_plugins.data._transforms import to_rgb

SIZE = 4
#: A ramp 0..65535 over 16 pixels (4×4).
RAMP16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 4369 * 15 = 65535


def _png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 48-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _load_one(path: Path) -> torch.Tensor:
    """The image as the folder data set gives it (centred full square, no resize)."""
    ds = ImageFolder(path.parent, SIZE, random_crop=False)
    assert ds.files == [path]
    return ds[0]


def _expected(gray8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(gray8.astype(np.float32) / 127.5 - 1.0)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    path.write_bytes(_png16(RAMP16, 0))
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what Pillow gives for 16-bit grayscale
    x = _load_one(path)
    assert x.shape == (3, SIZE, SIZE)
    want = _expected(np.rint(RAMP16 / 257.0))
    for c in range(3):
        torch.testing.assert_close(x[c], want, atol=1e-6, rtol=0)
    assert x.min() == -1 and x.max() == 1 and len(x.unique()) == 16  # a ramp, not black/white


def test_48bit_rgb_png(tmp_path):
    path = tmp_path / "rgb48.png"
    rgb = np.stack([RAMP16, RAMP16 // 2, 65535 - RAMP16], axis=-1)
    path.write_bytes(_png16(rgb, 2))
    x = _load_one(path)
    for c in range(3):  # within one 8-bit step of the exact value
        want = torch.from_numpy(rgb[..., c] / 65535.0 * 2 - 1).float()
        assert (x[c] - want).abs().max() <= 2 / 255 + 1e-6


def test_16bit_tiff(tmp_path):
    path = tmp_path / "t16.tiff"
    Image.fromarray(RAMP16).save(path)
    x = _load_one(path)
    torch.testing.assert_close(x[0], _expected(np.rint(RAMP16 / 257.0)), atol=1e-6, rtol=0)


# Every mode Pillow opens, written by the test in a format that keeps the mode, with the
# 8-bit gray value each pixel must decode to.
GRAY8 = (np.arange(16, dtype=np.uint8).reshape(4, 4) * 17)  # 0..255


def _mode_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """(image of ``mode``, expected H×W×3 uint8 RGB)."""
    gray3 = np.repeat(GRAY8[..., None], 3, axis=-1)
    if mode == "1":
        bits = GRAY8 >= 128
        return Image.fromarray(bits), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, -1)
    if mode == "L":
        return Image.fromarray(GRAY8, mode="L"), gray3
    if mode == "LA":
        return Image.fromarray(np.stack([GRAY8, 255 - GRAY8], -1), mode="LA"), gray3
    if mode == "P":
        return Image.fromarray(GRAY8, mode="L").convert("P"), gray3
    if mode == "RGB":
        return Image.fromarray(gray3, mode="RGB"), gray3
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([gray3, GRAY8[..., None]], -1), mode="RGBA"), gray3
    if mode == "CMYK":  # K only: RGB = 255 - K
        k = 255 - GRAY8
        zeros = np.zeros_like(k)
        return Image.fromarray(np.stack([zeros, zeros, zeros, k], -1), mode="CMYK"), gray3
    if mode == "I;16":
        return Image.fromarray(GRAY8.astype(np.uint16) * 257), gray3
    if mode == "I":
        return Image.fromarray(GRAY8.astype(np.int32) * 257), gray3
    if mode == "F":
        return Image.fromarray(GRAY8.astype(np.float32) / 255.0), gray3
    raise AssertionError(mode)


MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")


@pytest.mark.parametrize("mode", MODES)
def test_every_pillow_mode_decodes_to_the_right_range(tmp_path, mode):
    img, want = _mode_image(mode)
    assert img.mode == mode
    path = tmp_path / "img.tiff"  # TIFF keeps every one of these modes
    img.save(path)
    with Image.open(path) as back:
        assert back.mode == mode
    x = _load_one(path)
    want_t = torch.from_numpy(want.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert (x - want_t).abs().max() <= 1 / 127.5 + 1e-6, mode  # at most one 8-bit step


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=4, max_size=4),
       st.sampled_from(["I;16", "I"]))
def test_wide_gray_is_monotone_and_in_range(values, mode):
    """Property: 16-bit gray maps monotonically onto 0..255, 0 -> 0 and 65535 -> 255."""
    arr = np.array(values + [0, 65535], dtype=np.uint16 if mode == "I;16" else np.int32)
    img = Image.fromarray(arr.reshape(1, -1))
    assert img.mode == mode
    out = np.asarray(to_rgb(img))[0, :, 0].astype(int)
    assert out[-2] == 0 and out[-1] == 255
    order = np.argsort(arr, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)
    assert np.all(np.abs(out - arr / 257.0) <= 0.5 + 1e-9)


def test_folder_without_readable_image_says_how_many_and_why(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png at all")
    (tmp_path / "b.jpg").write_text("neither")
    (tmp_path / "c.png").write_bytes(_png16(np.tile(RAMP16, (8, 8)), 0)[:-60])  # truncated
    ds = ImageFolder(tmp_path, SIZE)
    with pytest.warns(RuntimeWarning), pytest.raises(ValidationError) as err:
        ds[0]
    msg = str(err.value)
    assert "\n" not in msg
    assert "no readable image" in msg and "all 3 image file(s) skipped" in msg
    assert "2 × not an image Pillow can identify" in msg and "1 × OSError: image file is truncated" in msg
    assert ds.skipped == 3


def test_folder_with_only_other_files_names_them(tmp_path):
    for name in ("notes.txt", "b.txt", "anim.gif"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ValidationError) as err:
        ImageFolder(tmp_path, SIZE)
    msg = str(err.value)
    assert "3 other file(s) skipped for their extension" in msg
    assert "2 × .txt" in msg and "1 × .gif" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match="the folder is empty"):
        ImageFolder(empty, SIZE)
