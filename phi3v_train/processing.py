"""Phi-3.5-vision processor: HD image transform, prompt building and label masking.

A native replacement for the hub's remote ``processing_phi3_v.py`` (which no longer loads on
transformers 5). The outputs are the official ones, bit for bit:

* images: transpose portrait images, PIL bilinear resize to ``scale * 336`` on the long side,
  white centred padding of the short side to a multiple of 336, transpose back, float32 CLIP
  normalisation, a 336x336 global view by bicubic interpolation (no antialias) of the whole
  padded image, then the row-major 336x336 crops and zero crops up to ``num_crops + 1``;
* text: the prompt is split on ``<|image_N|>`` tags, every chunk is tokenized with its own BOS
  (the official quirk), and each tag becomes a run of ``-N`` as long as the image's token count.

The fast path differs from the official code only in *how* it computes: the HD image is never
padded or transposed as a PIL image, normalisation is a per-channel lookup table computed with
the very same float32 operations torchvision uses (so the values are identical), and the
crops are written straight into the output tensor.

Training examples follow the Phi-3 Cookbook recipe: each turn's prompt is masked with -100 and
``assistant + "<|end|>\\n<|endoftext|>"`` are the labels.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer

from phi3v_data.prompt import turn_prompt, turn_response
from phi3v_data.tokens import CROP_SIZE, hd_size, num_image_tokens

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IGNORE_INDEX = -100
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")

# Files of a model directory that belong to the processor (official layout).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
)
PREPROCESSOR_FILE = "preprocessor_config.json"


class ImageTagError(ValueError):
    """``<|image_N|>`` tags of a prompt do not match its images (numbering or count)."""


def resolve_model_dir(name_or_path: str | Path, allow_patterns: Sequence[str]) -> Path:
    """Return a local directory for ``name_or_path``: the path itself, or a hub snapshot.

    A hub id is fetched with ``huggingface_hub.snapshot_download`` (only the files named by
    ``allow_patterns``), so the same code loads the real model and the tiny test checkpoint.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=list(allow_patterns)))
    except Exception as err:  # network, auth, unknown repo: one readable message
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local model directory nor a downloadable hub "
            f"repository ({type(err).__name__}: {err})"
        ) from err


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass
class Phi3VImageProcessor:
    """The official Phi-3-V HD image transform, computed with few passes over memory.

    ``num_crops`` is the maximum number of 336x336 crops per image (4 for Phi-3.5-vision,
    16 for Phi-3-vision); ``pixel_values`` always has ``num_crops + 1`` slots per image.
    Two scratch buffers are reused between images (fresh multi-megabyte allocations cost
    page faults), so one instance must not be shared by threads; DataLoader workers are
    processes and each gets its own copy.
    """

    num_crops: int = 4
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    _scratch: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_crops < 1:
            raise ValueError(f"num_crops must be at least 1, got {self.num_crops}")
        # torchvision's Normalize uses [3, 1, 1] float32 tensors; so do we, for the same bits
        self._mean = torch.as_tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.as_tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Tokens one ``width`` x ``height`` image becomes (``phi3v_data.tokens``)."""
        return num_image_tokens(width, height, self.num_crops)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A reused scratch array (numpy for ``np`` dtypes, torch otherwise) of ``shape``."""
        size = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or (buf.size if isinstance(buf, np.ndarray) else buf.numel()) < size:
            if isinstance(dtype, torch.dtype):
                buf = torch.empty(size, dtype=dtype)
            else:
                buf = np.empty(size, dtype=dtype)
            self._scratch[name] = buf
        return buf[:size].reshape(shape)

    def hd_image(self, image: Image.Image) -> torch.Tensor:
        """Return the normalised padded HD image, float32 ``[1, 3, H_pad, W_pad]``.

        The result lives in a scratch buffer that the next call overwrites. Only the resize
        runs in PIL, on the transposed image exactly as the official code does: PIL rounds
        to 8 bits between its horizontal and vertical passes, so resizing the untransposed
        image would differ by one level in places. The white padding and the transpose back
        are done while copying into the buffer, which gives the same pixels.
        """
        if image.mode != "RGB":
            image = image.convert("RGB")  # plain convert, as transformers 4.38-4.47 did
        width, height = image.size
        padded_w, padded_h = hd_size(width, height, self.num_crops)
        transposed = width < height
        if transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
            width, height = height, width
            padded_w, padded_h = padded_h, padded_w
        new_w = padded_w  # = scale * 336, the long side
        new_h = int(new_w / (width / height))  # the same floor as the official HD_transform
        pixels = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR))
        with warnings.catch_warnings():  # PIL's array is read-only; we only read it
            warnings.simplefilter("ignore", UserWarning)
            resized = torch.from_numpy(pixels).permute(2, 0, 1)  # [3, new_h, new_w] uint8
        top = int((padded_h - new_h) / 2)  # the extra pixel of odd padding goes to the bottom

        if transposed:  # write the transposed-back image: padding becomes left/right
            hd = self._buffer("hd", (1, 3, padded_w, padded_h), torch.float32)
            canvas = hd[0].transpose(1, 2)
        else:
            hd = self._buffer("hd", (1, 3, padded_h, padded_w), torch.float32)
            canvas = hd[0]
        # canvas is [3, padded_h, padded_w] in the (transposed) frame of the resize
        canvas[:, :top] = 255
        canvas[:, top : top + new_h] = resized
        canvas[:, top + new_h :] = 255
        # torchvision: ToTensor divides by 255, Normalize subtracts mean, divides by std
        return hd.div_(255).sub_(self._mean).div_(self._std)

    def preprocess_into(self, image: Image.Image, out: torch.Tensor) -> tuple[int, int]:
        """Write one image's ``[num_crops+1, 3, 336, 336]`` pixel values into ``out``.

        Slot 0 is the global view (bicubic, no antialias, of the whole padded image), then
        the row-major crops, then zero crops. Returns ``(H_pad, W_pad)``.
        """
        hd = self.hd_image(image)
        height, width = hd.shape[2:]
        rows, cols = height // CROP_SIZE, width // CROP_SIZE
        out[0] = F.interpolate(
            hd, size=(CROP_SIZE, CROP_SIZE), mode="bicubic", align_corners=False
        )[0]
        out[1 : 1 + rows * cols].view(rows, cols, 3, CROP_SIZE, CROP_SIZE).copy_(
            hd.view(3, rows, CROP_SIZE, cols, CROP_SIZE).permute(1, 3, 0, 2, 4)
        )
        out[1 + rows * cols :].zero_()
        return height, width

    def preprocess_one(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """Return ``pixel_values`` ``[num_crops+1, 3, 336, 336]`` and ``(H_pad, W_pad)``."""
        out = torch.empty(self.num_crops + 1, 3, CROP_SIZE, CROP_SIZE, dtype=torch.float32)
        return out, self.preprocess_into(image, out)

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """Process a list of PIL images into ``pixel_values``, ``image_sizes``, token counts."""
        if isinstance(images, Image.Image):
            images = [images]
        pixel_values = torch.empty(len(images), self.num_crops + 1, 3, CROP_SIZE, CROP_SIZE)
        sizes = []
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL image")
            sizes.append(self.preprocess_into(image, pixel_values[i]))
        return {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long).reshape(len(images), 2),
            "num_img_tokens": [self.num_image_tokens(*image.size) for image in images],
        }

    def to_dict(self) -> dict[str, Any]:
        """``preprocessor_config.json`` in the official layout."""
        return {
            "image_processor_type": "Phi3VImageProcessor",
            "processor_class": "Phi3VProcessor",
            "num_crops": self.num_crops,
            "num_img_tokens": 144,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTurn:
    """One user/assistant exchange; ``images`` become ``<|image_k|>`` before the user text."""

    user: str
    assistant: str | None = None
    images: Sequence[Image.Image] = ()


def _token_content(value: Any) -> str | None:
    """A special token from ``tokenizer_config.json``: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _where(sample_id: str | None) -> str:
    return f"sample {sample_id!r}: " if sample_id is not None else ""


def check_image_tags(text: str, num_images: int, sample_id: str | None = None) -> list[int]:
    """Return the tag numbers of ``text`` or raise one :class:`ImageTagError` naming the sample.

    The model fills the k-th run of image tokens with the k-th image whatever its number, so
    tags must be ``<|image_1|>`` .. ``<|image_n|>``, each once, in order, one per image.
    """
    numbers = [int(n) for n in IMAGE_TAG.findall(text)]
    expected = list(range(1, num_images + 1))
    if numbers != expected:
        shown = ", ".join(f"<|image_{n}|>" for n in numbers) or "no tags"
        raise ImageTagError(
            f"{_where(sample_id)}the prompt has {shown} but {num_images} image(s) were given; "
            f"expected {', '.join(f'<|image_{n}|>' for n in expected) or 'no tags'} "
            "(each once, in order)"
        )
    return numbers


class Phi3VProcessor:
    """Tokenizer plus image processor, producing the official Phi-3-V model inputs.

    Built from a model directory in the official layout with :meth:`from_pretrained`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: Phi3VImageProcessor,
        *,
        bos_token: str = "<s>",
        eos_token: str = "<|endoftext|>",
        pad_token: str | None = "<|endoftext|>",
        add_bos_token: bool = True,
        source_dir: Path | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.add_bos_token = add_bos_token
        self.source_dir = source_dir

        def token_id(token: str) -> int:
            found = tokenizer.token_to_id(token)
            if found is None:
                raise ValueError(f"the tokenizer has no token {token!r}")
            return found

        self.bos_token_id = token_id(bos_token)
        self.eos_token_id = token_id(eos_token)
        self.pad_token_id = token_id(pad_token or eos_token)
        self.end_token_id = token_id("<|end|>")
        self.user_token_id = token_id("<|user|>")
        self.assistant_token_id = token_id("<|assistant|>")
        # generation stops at the end of the assistant turn or at end-of-text
        self.stop_token_ids = [self.end_token_id, self.eos_token_id]

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, num_crops: int | None = None) -> Phi3VProcessor:
        """Read ``tokenizer.json``, ``tokenizer_config.json`` and ``preprocessor_config.json``.

        ``num_crops`` overrides the directory's value (the official ``AutoProcessor`` kwarg).
        """
        root = resolve_model_dir(model_dir, [*TOKENIZER_FILES, PREPROCESSOR_FILE])
        tokenizer_file = root / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{root} has no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
            if (root / name).is_file():
                config.update(json.loads((root / name).read_text(encoding="utf-8")))
        pre: dict[str, Any] = {}
        if (root / PREPROCESSOR_FILE).is_file():
            pre = json.loads((root / PREPROCESSOR_FILE).read_text(encoding="utf-8"))
        image_processor = Phi3VImageProcessor(
            num_crops=int(num_crops if num_crops is not None else pre.get("num_crops", 4)),
            image_mean=tuple(pre.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(pre.get("image_std", OPENAI_CLIP_STD)),
        )
        return cls(
            tokenizer,
            image_processor,
            bos_token=_token_content(config.get("bos_token")) or "<s>",
            eos_token=_token_content(config.get("eos_token")) or "<|endoftext|>",
            pad_token=_token_content(config.get("pad_token")),
            add_bos_token=bool(config.get("add_bos_token", True)),
            source_dir=root,
        )

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write the tokenizer files and ``preprocessor_config.json`` (official layout)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        copied = False
        if self.source_dir is not None:
            for name in TOKENIZER_FILES:
                if (self.source_dir / name).is_file():
                    if (self.source_dir / name).resolve() != (out / name).resolve():
                        shutil.copyfile(self.source_dir / name, out / name)
                    copied = True
        if not copied:
            self.tokenizer.save(str(out / "tokenizer.json"))
        pre = self.image_processor.to_dict()
        (out / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2) + "\n", encoding="utf-8")

    # -- tokens --------------------------------------------------------------------------------

    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_bos`` adds the BOS of the official ``tokenizer(chunk)``."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if add_bos and self.add_bos_token else ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; negative (image) ids are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens)

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def encode_prompt(
        self,
        text: str,
        images: Sequence[Image.Image] = (),
        sample_id: str | None = None,
    ) -> dict[str, Any]:
        """``input_ids`` (a list) of one prompt, plus ``pixel_values`` and ``image_sizes``.

        Each text chunk between tags gets its own BOS, and tag ``<|image_N|>`` becomes
        ``num_image_tokens`` copies of ``-N``: the official processor's output.
        """
        if not isinstance(text, str):
            raise TypeError(f"{_where(sample_id)}the prompt must be one string")
        images = list(images or ())
        numbers = check_image_tags(text, len(images), sample_id)
        if not images:
            return {"input_ids": self.tokenize(text, add_bos=True)}
        try:
            image_inputs = self.image_processor(images)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{_where(sample_id)}{err}") from err
        counts = image_inputs["num_img_tokens"]
        ids: list[int] = []
        for k, chunk in enumerate(IMAGE_TAG.split(text)[::2]):
            ids += self.tokenize(chunk, add_bos=True)
            if k < len(numbers):
                ids += [-numbers[k]] * counts[numbers[k] - 1]
        return {
            "input_ids": ids,
            "pixel_values": image_inputs["pixel_values"],
            "image_sizes": image_inputs["image_sizes"],
        }

    def __call__(
        self,
        text: str,
        images: Sequence[Image.Image] | None = None,
        sample_id: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """What the official processor returns for one prompt: ``[1, L]`` tensors."""
        encoded = self.encode_prompt(text, images or (), sample_id)
        input_ids = torch.tensor([encoded.pop("input_ids")], dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            **encoded,
        }

    # -- chat ----------------------------------------------------------------------------------

    @staticmethod
    def user_prompt(turn: ChatTurn) -> str:
        """``<|user|>`` message of a turn, ready for the assistant's answer (Cookbook format).

        The text comes from :mod:`phi3v_data.prompt`, the same function ``phi3v-data
        validate`` counts exact lengths with: tags go in front of the user text unless the
        text places its own ``<|image_1|>..<|image_n|>``.
        """
        return turn_prompt(turn.user, len(turn.images))

    @staticmethod
    def response_text(turn: ChatTurn) -> str:
        """The labelled part of a turn: the answer, ``<|end|>``, a newline and end-of-text."""
        return turn_response(turn.assistant or "")

    def _check_turn_text(self, turns: Sequence[ChatTurn], sample_id: str | None) -> None:
        for t, turn in enumerate(turns):
            found = IMAGE_TAG.search(turn.assistant or "")
            if found:
                raise ImageTagError(
                    f"{_where(sample_id)}turn {t + 1} assistant text contains the image tag "
                    f"{found.group(0)}; image tags belong in the user text"
                )

    def training_example(
        self, turns: Sequence[ChatTurn], sample_id: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Token ids and labels of a conversation, the Phi-3 Cookbook way.

        Turns are encoded one by one (so each turn starts with BOS, and each turn's tags start
        at ``<|image_1|>``) and concatenated; prompt tokens get label -100 and the response
        tokens are their own labels. Images are concatenated in turn order.
        """
        if not turns:
            raise ValueError(f"{_where(sample_id)}a training example needs at least one turn")
        self._check_turn_text(turns, sample_id)
        ids: list[int] = []
        labels: list[int] = []
        pixels, sizes = [], []
        for t, turn in enumerate(turns):
            if turn.assistant is None:
                raise ValueError(f"{_where(sample_id)}turn {t + 1} has no assistant text")
            prompt = self.encode_prompt(self.user_prompt(turn), turn.images, sample_id)
            response = self.tokenize(self.response_text(turn))
            ids += prompt["input_ids"] + response
            labels += [IGNORE_INDEX] * len(prompt["input_ids"]) + response
            if "pixel_values" in prompt:
                pixels.append(prompt["pixel_values"])
                sizes.append(prompt["image_sizes"])
        return self._example(ids, labels, pixels, sizes)

    def generation_inputs(
        self, turns: Sequence[ChatTurn], sample_id: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Inputs that ask for the last turn's answer; earlier turns are encoded as in training.

        The history is the training encoding of the earlier turns (answers included), so the
        model sees at inference exactly the token layout it was fine-tuned on.
        """
        if not turns:
            raise ValueError(f"{_where(sample_id)}a prompt needs at least one turn")
        history = self.training_example(turns[:-1], sample_id) if len(turns) > 1 else None
        self._check_turn_text(turns[-1:], sample_id)
        last = self.encode_prompt(self.user_prompt(turns[-1]), turns[-1].images, sample_id)
        ids = last["input_ids"]
        pixels = [last["pixel_values"]] if "pixel_values" in last else []
        sizes = [last["image_sizes"]] if "image_sizes" in last else []
        if history is not None:
            ids = history["input_ids"].tolist() + ids
            if "pixel_values" in history:
                pixels.insert(0, history["pixel_values"])
                sizes.insert(0, history["image_sizes"])
        return self._example(ids, None, pixels, sizes)

    @staticmethod
    def _example(
        ids: list[int],
        labels: list[int] | None,
        pixels: list[torch.Tensor],
        sizes: list[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        out = {"input_ids": torch.tensor(ids, dtype=torch.long)}
        if labels is not None:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        if pixels:
            out["pixel_values"] = torch.cat(pixels)
            out["image_sizes"] = torch.cat(sizes)
        return out

    # -- batching ------------------------------------------------------------------------------

    def collate(
        self,
        examples: Sequence[dict[str, torch.Tensor]],
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad a list of examples into a batch; images are concatenated in example order.

        Right padding for training, left padding for generation. The attention mask comes
        from the lengths, so a real ``<|endoftext|>`` (the pad token too) keeps mask 1.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        if pad_to_multiple_of:
            width = math.ceil(width / pad_to_multiple_of) * pad_to_multiple_of
        batch = len(examples)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        has_labels = all("labels" in e for e in examples)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
            span = slice(0, length) if padding_side == "right" else slice(width - length, width)
            input_ids[row, span] = example["input_ids"]
            attention_mask[row, span] = 1
            if has_labels:
                labels[row, span] = example["labels"]
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if has_labels:
            out["labels"] = labels
        with_images = [e for e in examples if "pixel_values" in e]
        if with_images:
            out["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            out["image_sizes"] = torch.cat([e["image_sizes"] for e in with_images])
        return out


__all__ = [
    "IGNORE_INDEX",
    "ChatTurn",
    "ImageTagError",
    "Phi3VImageProcessor",
    "Phi3VProcessor",
    "check_image_tags",
]
