"""Image checks shared by ``validate``, ``stats`` and the converters.

Reading a header is cheap and gives the size that decides the token count; a full
decode is what proves a file is not truncated. Both refuse decompression bombs before
allocating pixels.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# PIL's own warning threshold (about 89 megapixels): a 9,500 x 9,500 page. Anything larger
# is almost surely an accident or an attack, and would be resized to 16 crops anyway.
MAX_IMAGE_PIXELS = 89_478_485


class ImageProblem(ValueError):
    """A file that is not a usable image; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    format: str  # the real format from the file's bytes (JPEG, PNG, ...), not its extension
    mode: str


def probe_image(path: str | os.PathLike[str], *, decode: bool = False) -> ImageInfo:
    """Size and real format of an image file; with ``decode=True`` every pixel is decoded.

    Raises :class:`ImageProblem` for empty, unreadable, non-image, truncated and oversized
    files.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageProblem("image file is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageProblem(
                        f"image is {width}x{height} = {width * height:,} pixels, over the "
                        f"{MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb?)"
                    )
                info = ImageInfo(width, height, image.format or "unknown", image.mode)
                if decode:
                    image.load()
                return info
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageProblem(f"decompression bomb: {error}") from None
    except OSError as error:
        detail = error.strerror or str(error)
        raise ImageProblem(f"image cannot be decoded: {detail}") from None
    except (ValueError, SyntaxError) as error:  # PIL raises these for some malformed headers
        raise ImageProblem(f"image cannot be decoded: {error}") from None
