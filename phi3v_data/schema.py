"""The data contract: one :class:`Sample` per jsonl line, made of :class:`Turn` objects.

Everything that can be checked from the JSON alone lives here, so ``validate``, the
converters and the trainer share one set of rules. Structure and path syntax are checked
by pydantic's compiled core (a Rust regex for image paths); only turns whose text contains
a ``<`` pay for the Python-level image-tag check. Unknown keys are errors, never dropped.
Only keys are interned (``cache_strings="keys"``): values such as frame paths are nearly all
distinct, and caching them costs about a fifth of the validation time.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# One path component: anything but "/", "\" and NUL, and not "." or "..". Written without
# look-arounds so pydantic can run it in its Rust regex engine.
_COMPONENT = r"(?:[^/\\\x00.][^/\\\x00]*|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)"
SAFE_IMAGE_PATH_PATTERN = rf"^{_COMPONENT}(?:/{_COMPONENT})*$"

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")
LLAVA_TAG = re.compile(r"<image>|<video>")

ImagePath = Annotated[str, StringConstraints(pattern=SAFE_IMAGE_PATH_PATTERN)]


class TagError(ValueError):
    """An image-tag problem in one field of a turn; the message says how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


def image_tag_problem(text: str, num_images: int) -> str | None:
    """Why the ``<|image_N|>`` tags in a user text do not fit ``num_images`` images, or None.

    Text without tags is fine: the trainer puts ``<|image_1|>..<|image_n|>`` in front of it.
    Text with tags must have ``<|image_1|>..<|image_n|>`` in that order, each once, one per
    image: the model fills the k-th run of image tokens with the k-th image whatever the
    tag's number, so out-of-order tags would silently swap pictures.
    """
    if LLAVA_TAG.search(text):
        return (
            "LLaVA-style <image> tag: Phi-3.5-V uses <|image_1|>, <|image_2|>, ...; "
            "remove the tag (phi3v inserts image tags itself) or convert the file with "
            "'phi3v-data convert llava'"
        )
    numbers = [int(n) for n in IMAGE_TAG.findall(text)]
    if not numbers:
        return None
    if len(numbers) != num_images:
        return f"text has {len(numbers)} <|image_N|> tag(s) but the turn has {num_images} image(s)"
    if numbers != list(range(1, num_images + 1)):
        tags = ", ".join(f"<|image_{n}|>" for n in numbers)
        return (
            f"image tags must be <|image_1|>..<|image_{num_images}|> in order, each once; "
            f"found {tags}"
        )
    return None


class Turn(BaseModel):
    """One user message (with its images) and the assistant's answer."""

    model_config = ConfigDict(extra="forbid", strict=True, cache_strings="keys")

    images: list[ImagePath] = Field(
        default_factory=list,
        description="Paths relative to images/, POSIX, no '..', not absolute; shown in order.",
    )
    user: str = Field(description="User text; may contain <|image_N|> tags, else tags are added.")
    assistant: str = Field(description="Target answer; empty for unlabeled data.")

    @model_validator(mode="after")
    def _check_tags(self) -> Turn:
        if "<" in self.user:
            problem = image_tag_problem(self.user, len(self.images))
            if problem:
                raise TagError("user", problem)
        if "<" in self.assistant and (
            IMAGE_TAG.search(self.assistant) or LLAVA_TAG.search(self.assistant)
        ):
            raise TagError("assistant", "image tags belong in the user text, not in the answer")
        if not self.images and not self.user.strip():
            raise TagError("user", "the turn has neither images nor user text")
        return self


class Sample(BaseModel):
    """One training or evaluation example: one line of ``<name>_<split>.jsonl``."""

    model_config = ConfigDict(extra="forbid", strict=True, cache_strings="keys")

    id: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="Unique within its file."
    )
    source: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="The converter or dataset that produced the sample."
    )
    conversations: Annotated[list[Turn], Field(min_length=1)]
    meta: dict[str, Any] | None = Field(
        default=None,
        description="Free-form facts for evaluation (answers, labels, frame indices, ids).",
    )

    def image_paths(self) -> list[str]:
        """Every image of the sample, in the order the model sees them."""
        return [path for turn in self.conversations for path in turn.images]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one jsonl line, as committed in ``schemas/sample.schema.json``."""
    schema = Sample.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = (
        "One line of <name>_<split>.jsonl in the phi3v data layout. Image tags in user "
        "text (<|image_N|>) must be numbered 1..n, each once, n = len(images); this rule "
        "is not expressible in JSON Schema and is checked by phi3v-data validate."
    )
    return schema
