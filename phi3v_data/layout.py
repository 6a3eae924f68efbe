"""Where things live in an output folder, and which image paths are safe to open.

An image path in a jsonl line is untrusted input: it must stay inside ``images/`` even
after symlinks are followed, so a dataset cannot make the trainer read ``/etc/passwd``
or another user's files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

IMAGES_DIR = "images"
MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"


def images_root_for(jsonl_path: str | os.PathLike[str]) -> Path:
    """The default images root of a jsonl file: ``images/`` beside it."""
    return Path(jsonl_path).parent / IMAGES_DIR


def jsonl_name(name: str, split: str) -> str:
    """``<name>_<split>.jsonl``, the file name both the converters and the trainer use."""
    return f"{name}_{split}.jsonl"


def image_path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative POSIX image path, or None if it is.

    Agrees exactly with ``schema.SAFE_IMAGE_PATH_PATTERN``; this gives the reason.
    """
    if not path:
        return "image path is empty"
    if "\x00" in path:
        return "image path contains a NUL character"
    if "\\" in path:
        return "image path contains a backslash; use '/' (POSIX) separators"
    if path.startswith("/"):
        return "image path is absolute; it must be relative to the images folder"
    parts = path.split("/")
    if ".." in parts:
        return "image path contains '..'; it must stay inside the images folder"
    if "" in parts:
        return "image path has an empty component ('//' or a trailing '/')"
    if "." in parts:
        return "image path contains a '.' component; write it without './'"
    return None


class ImageResolver:
    """Checks that image paths exist as regular files inside one images root.

    Symlinks are allowed only when their target stays inside the root. Directory
    real paths are cached, so a million frames in a few thousand folders cost about one
    ``lstat`` each.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.real_root = os.path.realpath(self.root)
        self._dir_ok: dict[str, str | None] = {}

    def problem(self, relative: str) -> str | None:
        """None if ``images_root/relative`` is a readable file inside the root, else why not."""
        directory, _, _name = relative.rpartition("/")
        dir_problem = self._dir_ok.get(directory, "")
        if dir_problem == "":
            dir_problem = self._check_directory(directory)
            self._dir_ok[directory] = dir_problem
        if dir_problem is not None:
            return dir_problem
        full = os.path.join(self.root, relative)
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            return f"image file not found: {full}"
        except OSError as error:
            return f"image file cannot be read: {full}: {error.strerror}"
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(full)
            if not _inside(target, self.real_root):
                return f"image path {relative!r} is a symlink that leads outside {self.root}"
            if not os.path.isfile(target):
                return f"image file not found: {full} (broken symlink)"
            return None
        if not stat.S_ISREG(info.st_mode):
            return f"image path is not a regular file: {full}"
        return None

    def _check_directory(self, directory: str) -> str | None:
        if not directory:
            return None
        real = os.path.realpath(os.path.join(self.root, directory))
        if not _inside(real, self.real_root):
            return f"image folder {directory!r} is a symlink that leads outside {self.root}"
        return None

    def full_path(self, relative: str) -> Path:
        return self.root / relative


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
