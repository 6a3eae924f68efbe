"""Training data: find the layout's files, refuse what ``validate`` rejects, serve examples.

The trainer's data path is the one ``phi3v-data validate`` checks, so a dataset that
validate would reject never reaches a GPU, and the messages are validate's own. Lengths
are exact (the model's tokenizer, the run's ``num_crops``), so samples over
``max_length`` are handled before training by an explicit policy: ``error`` lists them,
``drop`` leaves whole samples out (image tokens are never cut) and counts them.

Images are opened in :meth:`LayoutDataset.__getitem__`, i.e. in the dataloader workers, so
the main process never holds decoded images of the whole dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from phi3v_data import Report, Sample, read_jsonl, validate
from phi3v_data.layout import images_root_for
from phi3v_data.lengths import TokenizerError
from phi3v_data.validate import SampleLength
from phi3v_train.processing import ChatTurn, Phi3VProcessor

logger = logging.getLogger(__name__)

TRAIN_SUFFIX = "_train.jsonl"
EVAL_SUFFIX = "_val.jsonl"
SHOWN_PER_KIND = 20  # problems printed per kind; `phi3v-data validate` lists them all


class DataError(ValueError):
    """The data cannot be trained on; ``problems`` holds one line per problem.

    A dataloader worker's exception reaches the main process re-created from one text (the
    worker's traceback); only its last line, the message itself, is kept.
    """

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            last = problems.strip().splitlines()[-1] if problems.strip() else problems
            problems = [last.split(f"{type(self).__name__}: ", 1)[-1]]
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class DataFiles:
    """The jsonl files of a run and the images folder each one's paths are relative to."""

    train: Path
    eval: Path | None = None

    @property
    def train_images(self) -> Path:
        return images_root_for(self.train)

    @property
    def eval_images(self) -> Path | None:
        return images_root_for(self.eval) if self.eval is not None else None


def find_data_files(
    data_dir: Path | None,
    train_file: Path | None = None,
    eval_file: Path | None = None,
    *,
    want_eval: bool = True,
) -> DataFiles:
    """Pick the training (and evaluation) jsonl the way the Cookbook's UCF-101 script does.

    ``data_dir`` holds ``<name>_train.jsonl`` and ``<name>_val.jsonl`` (the layout
    ``phi3v-data convert`` writes); ``train_file`` / ``eval_file`` override either. With
    several candidates we refuse to guess: training on the wrong split is silent otherwise.
    """
    if train_file is None and data_dir is None:
        raise DataError(["no training data: give --data_dir DIR or --train_file FILE"])
    if data_dir is not None and not data_dir.is_dir():
        raise DataError([f"--data_dir {data_dir}: no such folder"])
    if train_file is None:
        assert data_dir is not None
        train_file = _one_file(data_dir, TRAIN_SUFFIX, "--train_file", required=True)
    elif not train_file.is_file():
        raise DataError([f"--train_file {train_file}: no such file"])
    if not want_eval:
        return DataFiles(train_file)
    if eval_file is not None:
        if not eval_file.is_file():
            raise DataError([f"--eval_file {eval_file}: no such file"])
        return DataFiles(train_file, eval_file)
    if data_dir is None:
        return DataFiles(train_file)
    # prefer the validation split of the same dataset as the training file
    twin = data_dir / (train_file.name.removesuffix(TRAIN_SUFFIX) + EVAL_SUFFIX)
    if train_file.name.endswith(TRAIN_SUFFIX) and twin.is_file():
        return DataFiles(train_file, twin)
    return DataFiles(train_file, _one_file(data_dir, EVAL_SUFFIX, "--eval_file", required=False))


def _one_file(folder: Path, suffix: str, flag: str, *, required: bool) -> Path | None:
    found = sorted(folder.glob(f"*{suffix}"))
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DataError([f"{folder}: several *{suffix} files ({names}); choose one with {flag}"])
    if not found and required:
        raise DataError(
            [
                f"{folder}: no *{suffix} file (phi3v-data convert writes <name>{suffix}); "
                f"or pass {flag}"
            ]
        )
    return found[0] if found else None


@dataclass
class CheckedData:
    """Samples that passed validation and the length policy, with what was left out."""

    train: list[Sample]
    eval: list[Sample]
    max_length: int
    report: Report
    dropped: dict[str, list[SampleLength]] = field(default_factory=dict)

    @property
    def dropped_counts(self) -> dict[str, int]:
        return {split: len(items) for split, items in self.dropped.items()}


def context_length(model_dir: Path) -> int:
    """The model's context length (``max_position_embeddings`` of its config.json)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings", 131072))


def check_data(
    files: DataFiles,
    *,
    tokenizer_dir: Path,
    num_crops: int,
    max_length: int,
    overlong: str,
) -> CheckedData:
    """Run ``phi3v_data.validate`` on the files, apply the length policy, read the samples.

    Raises :class:`DataError` with validate's own problem lines when anything is wrong. With
    ``overlong="error"`` the limit is validate's ``max_length``, so over-long samples are
    reported exactly as ``phi3v-data validate --max-length`` reports them.
    """
    paths = [files.train] + ([files.eval] if files.eval is not None else [])
    try:
        report = validate(
            paths,
            num_crops=num_crops,
            tokenizer=tokenizer_dir,
            max_length=max_length if overlong == "error" else None,
        )
    except TokenizerError as error:  # the model folder, not the data, is at fault
        raise DataError([f"cannot count tokens with the model's tokenizer: {error}"]) from None
    if not report.ok:
        raise DataError(refusal_lines(report))
    for warning in report.warnings[:SHOWN_PER_KIND]:
        logger.warning("data warning: %s", warning)
    too_long = [length for length in report.lengths or [] if length.total > max_length]
    dropped = {
        split: [length for length in too_long if length.file == str(path)]
        for split, path in (("train", files.train), ("eval", files.eval))
        if path is not None
    }
    train = _read(files.train, dropped["train"])
    evaluation = _read(files.eval, dropped.get("eval", [])) if files.eval is not None else []
    for split, items in dropped.items():
        if items:
            shown = ", ".join(f"{item.id} ({item.total:,})" for item in items[:5])
            more = f" and {len(items) - 5:,} more" if len(items) > 5 else ""
            logger.warning(
                "dropped %d %s sample(s) over max_length %s tokens (--overlong drop): %s%s",
                len(items),
                split,
                f"{max_length:,}",
                shown,
                more,
            )
    if not train:
        raise DataError([f"{files.train}: no training samples left after dropping over-long ones"])
    return CheckedData(train, evaluation, max_length, report, dropped)


def refusal_lines(report: Report) -> list[str]:
    """validate's problems, grouped by kind, as ``phi3v-data validate`` prints them."""
    valid = sum(f.valid for f in report.files)
    lines = [
        f"the data did not pass phi3v-data validate: {len(report.files)} file(s), "
        f"{report.samples:,} samples, {valid:,} without errors, {len(report.errors):,} error(s)"
    ]
    by_kind: dict[str, list[str]] = {}
    for problem in report.errors:
        by_kind.setdefault(problem.kind, []).append(str(problem))
    for kind, problems in sorted(by_kind.items()):
        lines.append(f"{kind} ({len(problems):,}):")
        lines += [f"  {problem}" for problem in problems[:SHOWN_PER_KIND]]
        if len(problems) > SHOWN_PER_KIND:
            lines.append(
                f"  ... and {len(problems) - SHOWN_PER_KIND:,} more (phi3v-data validate "
                "--format json lists them all)"
            )
    if "overflow" in by_kind:
        lines.append(
            f"samples longer than --max_length {report.max_length:,}: raise --max_length, "
            "lower --num_crops, or pass --overlong drop to leave them out"
        )
    return lines


def _read(path: Path, dropped: Sequence[SampleLength]) -> list[Sample]:
    skip = {item.id for item in dropped}
    return [sample for sample in read_jsonl(path) if sample.id not in skip]


class LayoutDataset(torch.utils.data.Dataset):
    """Samples of the layout as training examples; images are read on demand.

    Each item is ``processor.training_example(...)``: ``input_ids`` and ``labels`` (prompt
    masked with -100), plus ``pixel_values`` and ``image_sizes`` when the sample has images.
    """

    def __init__(
        self, samples: Sequence[Sample], images_root: Path, processor: Phi3VProcessor
    ) -> None:
        self.samples = list(samples)
        self.images_root = Path(images_root)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, sample: Sample, relative: str) -> Image.Image:
        path = self.images_root / relative
        try:
            with Image.open(path) as image:
                image.load()
                return image
        except OSError as error:  # validate reads headers only; a truncated file shows here
            raise DataError([f"sample {sample.id!r}: cannot read image {path}: {error}"]) from None

    def turns(self, sample: Sample) -> list[ChatTurn]:
        """The sample's turns with their images opened (PIL, fully loaded, file closed)."""
        return [
            ChatTurn(
                user=turn.user,
                assistant=turn.assistant,
                images=[self._image(sample, relative) for relative in turn.images],
            )
            for turn in sample.conversations
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        return self.processor.training_example(self.turns(sample), sample_id=sample.id)


class Collator:
    """Right-padding collator for training (the attention mask comes from the lengths).

    A class rather than a closure so that spawn-started dataloader workers can pickle it.
    """

    def __init__(self, processor: Phi3VProcessor) -> None:
        self.processor = processor

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.processor.collate(examples, padding_side="right")
