"""Exact (or estimated) token lengths of samples, before any training.

Image tokens come from :mod:`phi3v_data.tokens`; text tokens from the model's own
``tokenizer.json`` (exact) or a stated estimate when no tokenizer is given. The text is
the one :mod:`phi3v_data.prompt` builds, tokenized the way the official processor does:
every chunk between image tags starts with BOS, the response has no special tokens added.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Protocol

import orjson

from phi3v_data.prompt import prompt_chunks, turn_prompt, turn_response
from phi3v_data.schema import Sample

_SPECIAL = re.compile(r"<\|[a-z0-9_]+\|>")
CHARS_PER_TOKEN_ESTIMATE = 3.0  # conservative for English with the Llama-2 vocabulary


class TextTokenCounter(Protocol):
    exact: bool

    def count(self, sample: Sample) -> int:
        """Text tokens of a sample (all turns, prompts and responses, no image tokens)."""
        ...


class TokenizerError(ValueError):
    """The tokenizer folder cannot be used."""


class ExactTextCounter:
    """Counts with the model's ``tokenizer.json`` (the ``tokenizers`` library, no torch)."""

    exact = True

    def __init__(self, tokenizer_dir: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        directory = Path(tokenizer_dir)
        tokenizer_file = directory / "tokenizer.json" if directory.is_dir() else directory
        if not tokenizer_file.is_file():
            raise TokenizerError(f"no tokenizer.json in {tokenizer_dir}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # the tokenizers library raises plain Exception
            raise TokenizerError(f"cannot load {tokenizer_file}: {error}") from None
        config_file = tokenizer_file.parent / "tokenizer_config.json"
        config = orjson.loads(config_file.read_bytes()) if config_file.is_file() else {}
        self.special_per_chunk = int(config.get("add_bos_token", True)) + int(
            config.get("add_eos_token", False)
        )

    def count(self, sample: Sample) -> int:
        texts: list[str] = []
        chunks = 0
        for turn in sample.conversations:
            pieces = prompt_chunks(turn_prompt(turn.user, len(turn.images)))
            texts.extend(pieces)
            chunks += len(pieces)
            texts.append(turn_response(turn.assistant))
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return sum(len(e.ids) for e in encodings) + chunks * self.special_per_chunk


class EstimatedTextCounter:
    """About one token per three characters, plus one per special token and chunk BOS."""

    exact = False

    def count(self, sample: Sample) -> int:
        total = 0
        for turn in sample.conversations:
            chunks = prompt_chunks(turn_prompt(turn.user, len(turn.images)))
            total += len(chunks) + sum(_estimate(chunk) for chunk in chunks)
            total += _estimate(turn_response(turn.assistant))
        return total


def _estimate(text: str) -> int:
    specials = _SPECIAL.findall(text)
    plain = len(text) - sum(len(s) for s in specials)
    return len(specials) + math.ceil(plain / CHARS_PER_TOKEN_ESTIMATE)


def text_token_counter(tokenizer_dir: str | os.PathLike[str] | None) -> TextTokenCounter:
    """Exact counting with a tokenizer folder, otherwise the estimate."""
    return ExactTextCounter(tokenizer_dir) if tokenizer_dir else EstimatedTextCounter()
