"""Image checks shared by ``validate``, ``stats`` and the converters.

Reading a header is cheap and gives the size that decides the token count; a full
decode is what proves a file is not truncated. Both refuse decompression bombs before
allocating pixels.
"""

from __future__ import annotations

import filecmp
import io
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

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
        if not os.path.exists(path):
            raise ImageProblem("image file not found")
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


# Formats the trainer reads as they are: copied byte for byte, named by their real format.
COPYABLE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}
# Pixel modes that PIL's .convert("RGB") turns into what the model was trained on.
PLAIN_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"}


def reencode_reason(info: ImageInfo, frames: int) -> str | None:
    """Why an image must be re-encoded for training, or None if its bytes can be copied."""
    if info.format not in COPYABLE_FORMATS:
        return f"{info.format} is not a trainer format"
    if info.mode not in PLAIN_MODES:
        return f"{info.mode} pixels"
    if frames > 1 and info.format != "GIF":
        return f"{frames} pages"
    return None


def _check_integrity(image: Image.Image, data_tail: bytes, full: bool) -> None:
    """Cheap proof that an image file is complete; a full decode with ``full``."""
    if full or image.format not in ("PNG", "JPEG"):
        image.load()
    elif image.format == "PNG":
        image.verify()  # walks every chunk and checks its CRC, without inflating pixels
    elif not data_tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageProblem("JPEG is truncated (no end-of-image marker)")


class MediaWriter:
    """Writes images below one images root, atomically, and remembers what it re-encoded.

    ``copy_image`` and ``write_image_bytes`` keep the original bytes whenever the trainer
    can read them (hard-linking with ``link=True``); the file's real format, not its
    name, picks the extension. Everything is written under a temporary name and renamed,
    so a killed run never leaves a half-written image under a final name.
    """

    def __init__(
        self, images_root: str | os.PathLike[str], *, link: bool = False, verify_full: bool = False
    ) -> None:
        self.root = Path(images_root)
        self.link = link
        self.verify_full = verify_full
        self.reencoded: list[tuple[str, str]] = []

    def copy_image(self, source: str | os.PathLike[str], dest_stem: str) -> str:
        """Copy (or re-encode) an image file; return its path relative to the images root."""
        source = Path(source)
        if not source.is_file():
            raise ImageProblem(f"image file not found: {source}")
        if source.stat().st_size == 0:
            raise ImageProblem(f"image file is empty (0 bytes): {source}")
        with open(source, "rb") as file:
            file.seek(max(0, source.stat().st_size - 64))
            tail = file.read()
        return self._store(source, tail, dest_stem, origin=str(source))

    def write_image_bytes(self, data: bytes, dest_stem: str, origin: str = "image bytes") -> str:
        """Store encoded image bytes (from a parquet column, say); return the relative path."""
        if not data:
            raise ImageProblem(f"{origin}: image bytes are empty")
        return self._store(io.BytesIO(data), data[-64:], dest_stem, origin=origin, raw=data)

    def save_frame(self, image: Image.Image, dest_stem: str, quality: int = 95) -> str:
        """Encode a decoded video frame as JPEG; return the relative path."""
        relative = f"{dest_stem}.jpg"
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        self._write_bytes(relative, buffer.getvalue())
        return relative

    def _store(
        self,
        source: Path | io.BytesIO,
        tail: bytes,
        dest_stem: str,
        *,
        origin: str,
        raw: bytes | None = None,
    ) -> str:
        try:
            with Image.open(source) as image:
                info = ImageInfo(*image.size, image.format or "unknown", image.mode)
                if info.width * info.height > MAX_IMAGE_PIXELS:
                    raise ImageProblem(f"{info.width}x{info.height} image is over the pixel limit")
                frames = getattr(image, "n_frames", 1)
                reason = reencode_reason(info, frames)
                if reason is not None:
                    return self._reencode(image, dest_stem, reason, origin)
                _check_integrity(image, tail, self.verify_full)
        except ImageProblem as error:
            raise ImageProblem(f"{origin}: {error}") from None
        except (UnidentifiedImageError, Image.DecompressionBombError):
            raise ImageProblem(f"{origin}: not an image file (unrecognised format)") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageProblem(f"{origin}: image cannot be decoded: {error}") from None
        relative = dest_stem + COPYABLE_FORMATS[info.format]
        if raw is not None:
            self._write_bytes(relative, raw)
        else:
            assert isinstance(source, Path)
            self._copy_file(source, relative)
        return relative

    def _reencode(self, image: Image.Image, dest_stem: str, reason: str, origin: str) -> str:
        image.seek(0)
        converted = _to_trainer_mode(image)
        as_jpeg = image.format == "JPEG"  # a CMYK JPEG stays a JPEG; the rest goes lossless
        relative = dest_stem + (".jpg" if as_jpeg else ".png")
        buffer = io.BytesIO()
        converted.save(buffer, format="JPEG" if as_jpeg else "PNG", quality=95)
        self._write_bytes(relative, buffer.getvalue())
        self.reencoded.append((relative, f"{reason} ({origin})"))
        return relative

    def _target(self, relative: str) -> Path:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _write_bytes(self, relative: str, data: bytes) -> None:
        target = self._target(relative)
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            return  # the same image from another item, or a resumed run
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temp.write_bytes(data)
        os.replace(temp, target)

    def _copy_file(self, source: Path, relative: str) -> None:
        target = self._target(relative)
        if target.is_file():
            if self.link and os.path.samefile(source, target):
                return
            if not self.link and filecmp.cmp(source, target, shallow=False):
                return  # the same image from another item, or a resumed run
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temp.unlink(missing_ok=True)
        if self.link:
            os.link(source, temp)
        else:
            shutil.copyfile(source, temp)
        os.replace(temp, target)


def _to_trainer_mode(image: Image.Image) -> Image.Image:
    """8-bit RGB (or L) pixels: 16-bit values are scaled, not clipped, to 8 bits."""
    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        return Image.fromarray(np.clip(pixels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")
