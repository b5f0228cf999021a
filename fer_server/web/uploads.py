"""Decoding uploaded images safely, with Pillow.

The size in the image header is checked before any pixel is decoded, so a
small file that declares a huge image (a decompression bomb) is refused
without allocating it, and a truncated file is refused instead of being
filled with grey.
"""
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def decode_image(data, max_pixels=40_000_000):
    """Decode JPEG, PNG, BMP, WebP, GIF (first frame) or TIFF bytes.

    Args:
        data: the file's bytes.
        max_pixels: largest width x height accepted, checked on the header.

    Returns:
        ``(H, W, 3)`` uint8 BGR array (OpenCV's channel order), turned
        upright by its EXIF orientation as browsers show it.

    Raises:
        ImageError: 400 for empty, unrecognised, corrupt or truncated data;
            413 for an image over ``max_pixels``.
    """
    if not data:
        raise ImageError("the request has no image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image of {width}x{height} pixels is too large to decode (limit "
                                 f"{max_pixels:,} pixels)", status=413)
            if width == 0 or height == 0:
                raise ImageError("image has no pixels")
            image.load()  # decodes; raises OSError on truncated data
            image = ImageOps.exif_transpose(image)  # phone photos: as the browser shows them
            rgb = np.asarray(image.convert("RGB"))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image is too large to decode ({e})", status=413) from None
    except UnidentifiedImageError:
        raise ImageError("the data is not an image in a supported format "
                         "(JPEG, PNG, BMP, WebP, GIF, TIFF)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"the image is corrupt or truncated ({e})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])
