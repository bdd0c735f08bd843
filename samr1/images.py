"""The one image reader of samr1: every dataset, predict, the rewards and the callbacks see the same pixels.

Rules (docs/data.md, "Image loading"):

- The EXIF orientation is applied (as OpenCV's `imread`, which LISA uses, and every photo viewer do), so a phone
  photo is upright; sizes checked at set-up (`image_info`) are the oriented sizes, read from the header only.
- Every mode becomes 8-bit RGB by scaling, never by clipping: 16-bit greys (`I;16`, `I;16B`, `I;16L`, and `I`
  holding values 0..65535) are divided by 257, so 65535 is 255 and a 16-bit PNG keeps its tones; other `I`
  images and `F` images outside [0, 1] are stretched from their minimum to their maximum; `F` images in [0, 1]
  are multiplied by 255. `1` and `L` are repeated to three channels, `P` goes through its palette, `CMYK`,
  `YCbCr` and `HSV` are converted by Pillow and `LAB` through a CIELAB -> sRGB transform. Transparent pixels
  (`RGBA`, `LA`, `PA`, `P` with a transparent colour) are composited onto black, which for the usual
  fully-transparent black pixels is what OpenCV's `imread` gives. Colour profiles are not applied (neither
  OpenCV nor Pillow's `convert` does). 48-bit RGB PNGs are read by Pillow as their high bytes.
- A missing file is a FileNotFoundError naming the path; an unreadable, truncated or undecodable one an
  `ImageReadError` (a ValueError) naming the path and Pillow's reason.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

ImageSource = str | os.PathLike | bytes

# EXIF orientation -> the transpose that makes the image upright (the EXIF 2.3 table, as ImageOps uses).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_WITH_ALPHA = ("RGBA", "LA", "PA")
# Errors Pillow raises for a file it cannot identify or decode (a truncated JPEG is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image file (or image bytes) that exists but cannot be read; the message names it."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: the upright (EXIF-oriented) size as (width, height), the mode, the orientation."""

    size: tuple[int, int]
    mode: str
    orientation: int


def _name(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    return f"<{len(source)} image bytes>" if isinstance(source, bytes) else str(source)


def _open(source: ImageSource, name: str | None) -> Image.Image:
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return Image.open(path)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 when absent or invalid), read without decoding the pixels."""
    if image.format == "PNG":
        # PngImageFile.getexif decodes the whole image to look for an eXIf chunk after the pixels; the size
        # check at set-up must stay a header read, and the reader must agree with it, so both use only
        # an eXIf chunk that precedes the image data.
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = image.getexif()
    value = exif.get(ExifTags.Base.Orientation, 1)
    return int(value) if isinstance(value, int) and value in range(1, 9) else 1


def image_info(source: ImageSource, name: str | None = None) -> ImageInfo:
    """Size (upright), mode and orientation from the header; FileNotFoundError / ImageReadError naming it."""
    where = _name(source, name)
    try:
        with _open(source, name) as image:
            turn = orientation(image)
            width, height = image.size
            mode = image.mode
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {where}: {err}") from err
    if turn in (5, 6, 7, 8):  # a quarter turn swaps the sides
        width, height = height, width
    return ImageInfo(size=(width, height), mode=mode, orientation=turn)


def image_size(source: ImageSource, name: str | None = None) -> tuple[int, int]:
    """(width, height) of the upright image, from the header only (decoding every image at set-up would make
    it as slow as an epoch; a file whose pixels are truncated fails when it is read)."""
    return image_info(source, name).size


def open_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """The decoded image, upright, in its own mode (masks are read with this; `load_image` for pixels)."""
    where = _name(source, name)
    try:
        with _open(source, name) as image:
            turn = orientation(image)
            image.load()  # a truncated or corrupt file fails here
            upright = image.transpose(_UPRIGHT[turn]) if turn in _UPRIGHT else image.copy()
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as err:
        raise ImageReadError(f"cannot read image {where}: {err}") from err
    upright.info.pop("exif", None)  # the orientation is applied; nothing downstream may apply it again
    return upright


def load_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """The image as 8-bit RGB following the module's rules: upright, every mode scaled faithfully."""
    image = open_image(source, name)
    try:
        return to_rgb(image)
    except (ValueError, OSError) as err:
        raise ImageReadError(f"cannot convert image {_name(source, name)} to RGB: {err}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of a decoded image of any Pillow mode (the module doc's rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        return _grey(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _grey(values / 257.0)  # 16-bit data in a 32-bit image (some TIFF and PNG readers)
        return _grey(_stretch(values))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0 and values.max() <= 1:
            return _grey(values * 255.0)
        return _grey(_stretch(values))
    if mode == "P":
        if "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA"):
            return _onto_black(image.convert("RGBA"))
        return image.convert("RGB")
    if mode in _WITH_ALPHA:
        return _onto_black(image.convert("RGBA"))
    if mode in ("RGBa", "La"):  # premultiplied: the stored colour already is the colour over black
        pixels = np.asarray(image)
        return Image.fromarray(
            np.ascontiguousarray(pixels[..., :3] if mode == "RGBa" else pixels[..., [0, 0, 0]])
        )
    if mode == "LAB":
        transform = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(image, transform)
    return image.convert("RGB")  # 1, L, CMYK, YCbCr, HSV, RGBX, ...


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linear map of [min, max] onto [0, 255] (a constant image is black)."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _grey(values: np.ndarray) -> Image.Image:
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


def _onto_black(rgba: Image.Image) -> Image.Image:
    pixels = np.asarray(rgba).astype(np.uint16)
    rgb = (pixels[..., :3] * pixels[..., 3:] + 127) // 255  # colour x alpha, rounded
    return Image.fromarray(rgb.astype(np.uint8))


__all__ = [
    "ImageInfo",
    "ImageReadError",
    "ImageSource",
    "image_info",
    "image_size",
    "load_image",
    "open_image",
    "orientation",
    "to_rgb",
]
