"""samr1.images: every Pillow mode becomes the 8-bit RGB the rules say, EXIF orientation is applied, errors name the
file. Expected pixels are written by hand (or by Pillow's own conversions where the rule is "as Pillow converts")."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from samr1.images import ImageReadError, image_info, image_size, load_image, open_image, to_rgb


def _rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out)


def _grey(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.uint8)
    return np.repeat(values[..., None], 3, axis=-1)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_sixteen_bit_greys_are_scaled_not_clipped(mode):
    values = np.array([[0, 257, 32896, 65535, 1000]], dtype=np.uint16)
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    image = Image.frombytes(mode, (5, 1), values.astype(dtype).tobytes())
    assert image.mode == mode and np.asarray(image).tolist() == values.tolist()
    # v / 257 rounded: 1000 / 257 = 3.89 -> 4 (Pillow's convert("RGB") would give 255 for all but 0).
    np.testing.assert_array_equal(_rgb(image), _grey([[0, 1, 128, 255, 4]]))


def test_thirty_two_bit_images_map_their_range():
    sixteen = Image.fromarray(np.array([[0, 514, 65535]], dtype=np.int32))
    assert sixteen.mode == "I"
    np.testing.assert_array_equal(_rgb(sixteen), _grey([[0, 2, 255]]))
    wide = Image.fromarray(np.array([[-50, 0, 205]], dtype=np.int32))  # outside 0..65535: min..max
    np.testing.assert_array_equal(_rgb(wide), _grey([[0, 50, 255]]))


def test_float_images():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(_rgb(unit), _grey([[0, 128, 255]]))
    wide = Image.fromarray(np.array([[2.0, 4.0, 6.0]], dtype=np.float32))
    np.testing.assert_array_equal(_rgb(wide), _grey([[0, 128, 255]]))
    constant = Image.fromarray(np.full((1, 2), 7.0, dtype=np.float32))
    np.testing.assert_array_equal(_rgb(constant), _grey([[0, 0]]))


def test_transparent_pixels_are_composited_onto_black():
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    expected = np.array([[[200, 100, 50], [0, 0, 0], [100, 50, 25]]], dtype=np.uint8)  # c * a / 255, rounded
    np.testing.assert_array_equal(_rgb(Image.fromarray(rgba)), expected)
    la = Image.fromarray(np.array([[[200, 255], [200, 0], [200, 128]]], dtype=np.uint8), mode="LA")
    np.testing.assert_array_equal(_rgb(la), _grey([[200, 0, 100]]))
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    np.testing.assert_array_equal(_rgb(palette), [[[0, 0, 0], [40, 50, 60]]])
    opaque = Image.new("P", (1, 1))
    opaque.putpalette([10, 20, 30])
    np.testing.assert_array_equal(_rgb(opaque), [[[10, 20, 30]]])


def test_other_modes_convert_as_pillow_does():
    base = Image.fromarray(np.array([[[200, 100, 50], [60, 180, 90]]], dtype=np.uint8))
    for mode in ("L", "1", "CMYK", "YCbCr", "HSV", "RGBX"):
        image = base.convert(mode)
        np.testing.assert_array_equal(_rgb(image), np.asarray(image.convert("RGB")), err_msg=mode)
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(base, to_lab)
    assert np.abs(_rgb(lab).astype(int) - np.asarray(base).astype(int)).max() <= 2  # a CIELAB round trip


def _oriented_png(orientation: int) -> tuple[bytes, np.ndarray]:
    """A 3 x 2 PNG (lossless) whose stored pixels, turned by `orientation`, give the returned upright pixels."""
    stored = np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 10
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    upright = {
        1: stored,
        3: stored[::-1, ::-1],
        6: np.rot90(stored, k=-1),  # stored rotated 90 degrees clockwise
        8: np.rot90(stored, k=1),
    }[orientation]
    return buffer.getvalue(), upright


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_and_the_header_size_agrees(orientation):
    data, upright = _oriented_png(orientation)
    np.testing.assert_array_equal(np.asarray(load_image(data)), upright)
    assert image_size(data) == (upright.shape[1], upright.shape[0])
    assert image_info(data).orientation == orientation
    assert "exif" not in open_image(data).info  # applied once; nothing downstream turns it again


def test_unreadable_files_name_their_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_image(tmp_path / "nowhere.png")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        image_size(junk)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    good = tmp_path / "good.jpg"
    Image.fromarray(pixels).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.7)])
    assert image_size(truncated) == (64, 48)  # the header is intact: set-up cannot tell
    with pytest.raises(ImageReadError, match=r"truncated.jpg: image file is truncated"):
        load_image(truncated)
