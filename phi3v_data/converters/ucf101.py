"""``ucf101``: UCF-101 videos become 8-frame classification samples, as in the Cookbook.

Two layouts on disk:

* the official release: ``--src`` holds ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and
  ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``).
  ``--split-set`` picks the official lists; test lists carry no labels, so the class is
  the folder. ``val`` is carved from train by whole groups (the highest ``--val-groups``
  group numbers of the train list), so no ``gXX`` group lands in two splits.
* ``sayakpaul/ucf101-subset``: ``UCF101_subset/{train,val,test}/<Class>/*.avi`` (``--src``
  may be the subset folder or its parent). Without ``--src`` it is downloaded from the
  Hub, as the Cookbook's converter does.

The class always comes from the folder, never from the file name: the release names
``HandstandPushups`` clips ``v_HandStandPushups_*``, and list paths are matched to files
case-insensitively. Frames are exact (see :mod:`phi3v_data.video`), saved as
``images/<split>/<Class>/<stem>.<k>.jpg``. There is no decord backend: on B-frame AVIs
such as these it returns neighbouring or far-off frames.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from phi3v_data.converter import Built, Converter, ConverterOptions, Item, Skip, SourceError
from phi3v_data.media import MediaWriter
from phi3v_data.registry import register
from phi3v_data.schema import Turn
from phi3v_data.video import sample_video

HUB_REPO = "sayakpaul/ucf101-subset"
HUB_FILE = "UCF101_subset.tar.gz"
SUBSET_SPLITS = ("train", "val", "test")
PROMPT = "Classify the video into one of the following classes: {classes}."
GROUP_CLIP = re.compile(r"_g(\d+)_c(\d+)\.", re.IGNORECASE)

EXPECTED_LAYOUTS = (
    "expected the official release (a folder holding UCF-101/<Class>/*.avi and "
    "ucfTrainTestlist/) or the subset (UCF101_subset/{train,val,test}/<Class>/*.avi, "
    "or its parent folder)"
)


class UCF101Options(ConverterOptions):
    split_set: int = Field(1, ge=1, le=3, description="Official train/test list (1, 2 or 3).")
    val_groups: int = Field(
        2, ge=0, le=20, description="Official layout: train groups held out as val (0: none)."
    )
    num_frames: int = Field(8, ge=1, le=64, description="Frames per video.")
    sampling: Literal["uniform", "centers"] = Field(
        "uniform", description="uniform: int(i*N/k) as the Cookbook; centers: segment centres."
    )
    jpeg_quality: int = Field(
        75, ge=1, le=100, description="JPEG quality of saved frames (75: PIL's, the Cookbook's)."
    )


@register
class UCF101(Converter):
    name = "ucf101"
    summary = "UCF-101 videos, official release or the Cookbook's subset (8 exact frames each)"
    Options = UCF101Options
    options: UCF101Options
    requires_src = False

    def prepare(self) -> None:
        if self.src is None:
            self.src = _download_subset()
        super().prepare()
        if self._official_root() is None and self._subset_root() is None:
            raise SourceError(f"--src {self.src}: {EXPECTED_LAYOUTS}")

    def _official_root(self) -> Path | None:
        assert self.src is not None
        ok = (self.src / "UCF-101").is_dir() and (self.src / "ucfTrainTestlist").is_dir()
        return self.src if ok else None

    def _subset_root(self) -> Path | None:
        assert self.src is not None
        for root in (self.src, self.src / "UCF101_subset"):
            if root.is_dir() and any((root / split).is_dir() for split in SUBSET_SPLITS):
                return root
        return None

    def plan(self) -> Iterator[Item | Skip]:
        official = self._official_root()
        if official is not None:
            yield from self._plan_official(official)
        else:
            subset = self._subset_root()
            assert subset is not None
            yield from self._plan_subset(subset)

    def _plan_subset(self, root: Path) -> Iterator[Item | Skip]:
        splits = [s for s in SUBSET_SPLITS if (root / s).is_dir()]
        classes = sorted({c.name for s in splits for c in (root / s).iterdir() if c.is_dir()})
        prompt = PROMPT.format(classes=", ".join(classes))
        for split in splits:
            for video in sorted((root / split).glob("*/*.avi")):
                origin = video.relative_to(root.parent).as_posix()
                yield Item(split, origin, (str(video), video.parent.name, prompt, origin))

    def _plan_official(self, root: Path) -> Iterator[Item | Skip]:
        lists = root / "ucfTrainTestlist"
        classes = _read_class_index(lists / "classInd.txt")
        prompt = PROMPT.format(classes=", ".join(sorted(classes.values())))
        finder = _VideoFinder(root / "UCF-101")
        number = self.options.split_set
        train = list(_read_list(lists / f"trainlist0{number}.txt"))
        test = list(_read_list(lists / f"testlist0{number}.txt"))
        groups = sorted({g for _, relative in train if (g := _group(relative)) is not None})
        held_out = (
            set(groups[len(groups) - self.options.val_groups :])
            if self.options.val_groups
            else set()
        )
        assigned = [
            ("val" if _group(relative) in held_out else "train", line, relative)
            for line, relative in train
        ]
        ordered = [a for a in assigned if a[0] == "train"] + [a for a in assigned if a[0] == "val"]
        ordered += [("test", line, relative) for line, relative in test]
        for split, line, relative in ordered:
            list_name = (
                f"ucfTrainTestlist/{'test' if split == 'test' else 'train'}list0{number}.txt"
            )
            label = relative.split("/", 1)[0] if "/" in relative else ""
            if not label or label not in classes.values():
                yield Skip(split, f"{list_name}:{line}", f"unknown class in {relative!r}")
                continue
            video = finder.find(relative)
            origin = f"UCF-101/{relative}"
            if video is None:
                yield Skip(split, origin, f"video not found: {root / 'UCF-101' / relative}")
                continue
            yield Item(split, origin, (str(video), label, prompt, origin))

    def build(self, item: Item, media: MediaWriter) -> Built:
        path, label, prompt, origin = item.payload
        options = self.options
        video = sample_video(path, num_frames=options.num_frames, sampling=options.sampling)
        stem = Path(path).stem
        images = [
            media.save_frame(frame.image, f"{item.split}/{label}/{stem}.{k}", options.jpeg_quality)
            for k, frame in enumerate(video.frames)
        ]
        meta = {
            "video": origin,
            "frames": [frame.index for frame in video.frames],
            "timestamps": [frame.time for frame in video.frames],
            "total_frames": video.total_frames,
            "fps": video.fps,
        }
        match = GROUP_CLIP.search(Path(path).name)
        if match:
            meta["group"], meta["clip"] = int(match.group(1)), int(match.group(2))
        return Built([Turn(images=images, user=prompt, assistant=label)], meta)


class _VideoFinder:
    """List paths -> files, case-insensitively within each class folder (HandStandPushups)."""

    def __init__(self, videos: Path) -> None:
        self.videos = videos
        self._folders: dict[str, dict[str, Path]] = {}

    def find(self, relative: str) -> Path | None:
        exact = self.videos / relative
        if exact.is_file():
            return exact
        folder, _, name = relative.rpartition("/")
        if folder not in self._folders:
            directory = self.videos / folder
            files = directory.iterdir() if directory.is_dir() else []
            self._folders[folder] = {p.name.lower(): p for p in files}
        return self._folders[folder].get(name.lower())


def _read_class_index(path: Path) -> dict[int, str]:
    if not path.is_file():
        raise SourceError(f"{path} is missing: {EXPECTED_LAYOUTS}")
    classes = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise SourceError(f"{path}:{number}: expected '<index> <ClassName>', got {line!r}")
        classes[int(parts[0])] = parts[1]
    return classes


def _read_list(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, relative video path) of a train or test list; labels are ignored,
    since the class folder is the label (test lists have none)."""
    if not path.is_file():
        raise SourceError(f"{path} is missing: {EXPECTED_LAYOUTS}")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if parts:
            yield number, parts[0].replace("\\", "/")


def _group(relative: str) -> int | None:
    match = GROUP_CLIP.search(relative)
    return int(match.group(1)) if match else None


def _download_subset() -> Path:
    """Fetch and unpack the Cookbook's subset from the Hub (cached); clear error offline."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SourceError(
            "no --src given, and downloading sayakpaul/ucf101-subset needs huggingface_hub "
            "(pip install huggingface_hub), or pass --src to a local copy"
        ) from None
    try:
        archive = Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset"))
    except Exception as error:  # offline, no access, ...: one line, never a traceback
        raise SourceError(
            f"no --src given, and {HUB_REPO} could not be downloaded from the Hugging Face "
            f"Hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "pass --src to a local copy"
        ) from None
    target = archive.parent / "extracted"
    if not (target / "UCF101_subset").is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target
