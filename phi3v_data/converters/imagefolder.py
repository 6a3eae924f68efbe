"""``imagefolder``: class folders of images become a classification dataset.

``SRC/<Class>/*.jpg`` (one split, ``--split``), or ``SRC/<split>/<Class>/*.jpg`` when the
top-level folders are split names. The prompt lists every class, like the Cookbook's
UCF-101 prompt; the answer is the folder name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from phi3v_data.converter import (
    SPLIT_NAMES,
    Built,
    Converter,
    ConverterOptions,
    Item,
    Skip,
    SourceError,
)
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class ImageFolderOptions(ConverterOptions):
    name: str = Field("imagefolder", description="Output file prefix: <name>_<split>.jsonl.")
    split: str = Field("train", description="Split name when SRC has no split folders.")
    prompt: str = Field(
        "Classify the image into one of the following classes: {classes}.",
        description="User prompt; {classes} becomes the sorted class list.",
    )


@register
class ImageFolder(Converter):
    name = "imagefolder"
    summary = "class folders of images (SRC/<Class>/*.jpg or SRC/<split>/<Class>/*.jpg)"
    Options = ImageFolderOptions
    options: ImageFolderOptions

    @property
    def dataset_name(self) -> str:
        return self.options.name

    def prepare(self) -> None:
        super().prepare()
        assert self.src is not None
        if not self.src.is_dir() or not self._split_dirs():
            raise SourceError(
                f"--src {self.src}: expected class folders of images, SRC/<Class>/*.jpg or "
                f"SRC/<split>/<Class>/*.jpg with split in {', '.join(SPLIT_NAMES)}"
            )

    def _split_dirs(self) -> dict[str, Path]:
        assert self.src is not None
        folders = sorted(p for p in self.src.iterdir() if p.is_dir())
        named = {p.name: p for p in folders if p.name in SPLIT_NAMES}
        if named:
            return named
        has_images = any(_images(folder) for folder in folders)
        return {self.options.split: self.src} if has_images else {}

    def plan(self) -> Iterator[Item | Skip]:
        assert self.src is not None
        splits = self._split_dirs()
        classes = sorted({c.name for root in splits.values() for c in root.iterdir() if c.is_dir()})
        prompt = self.options.prompt.format(classes=", ".join(classes))
        for split, root in splits.items():
            for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
                for image in _images(class_dir):
                    relative = image.relative_to(self.src).as_posix()
                    yield Item(split, relative, (str(image), class_dir.name, prompt))

    def build(self, item: Item, media: MediaWriter) -> Built:
        path, label, prompt = item.payload
        stored = media.copy_image(path, f"{item.split}/{label}/{Path(path).stem}")
        return Built(
            [Turn(images=[stored], user=prompt, assistant=label)],
            {"label": label, "path": item.origin},
        )


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
