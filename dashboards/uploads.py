"""Checking and decoding an uploaded image: JPEG or PNG only, within size limits, never anything else.

The file is only ever read by Pillow's JPEG and PNG decoders; nothing uploaded is unpickled or run.
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG")


class UploadError(ValueError):
    """An upload the app cannot use; the message is shown to the user."""


def read_image(path: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """The decoded image at ``path`` (an uploaded file), or :class:`UploadError` saying what is wrong."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UploadError(
            f"{name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB. Upload a smaller JPEG or PNG."
        )
    try:
        image = Image.open(path, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UploadError(f"{name} is not a JPEG or PNG image. Upload a .jpg or .png file.") from None
    except Image.DecompressionBombError:
        raise UploadError(
            f"{name} has far too many pixels; the limit is {max_pixels / 1e6:.0f} megapixels. Upload a smaller image."
        ) from None
    if image.width * image.height > max_pixels:
        raise UploadError(
            f"{name} is {image.width}x{image.height} pixels; the limit is {max_pixels / 1e6:.0f} "
            "megapixels. Upload a smaller image."
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupted data
        raise UploadError(
            f"{name} looks like a {image.format} file but cannot be decoded ({err}); it may be corrupted or truncated."
        ) from None
    return image
