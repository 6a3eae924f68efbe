"""The Phi-3.5-V chat text of a turn, as the Cookbook trainer builds it.

Kept here as plain strings (no tokenizer, no torch) so that ``validate`` can count exact
sequence lengths with the very text ``phi3v_train`` will tokenize.
"""

from __future__ import annotations

import re

from phi3v_data.schema import IMAGE_TAG

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
END_OF_TEXT = "<|endoftext|>"

IMAGE_TAG_SPLIT = re.compile(r"<\|image_\d+\|>")


def user_content(user: str, num_images: int) -> str:
    """The user message: tags ``<|image_1|>..<|image_n|>`` and a newline in front of the
    text, unless the text already places its own tags."""
    if num_images == 0 or IMAGE_TAG.search(user):
        return user
    tags = "".join(f"<|image_{n}|>" for n in range(1, num_images + 1))
    return f"{tags}\n{user}"


def turn_prompt(user: str, num_images: int) -> str:
    """The chat-template text of one user turn, ending with the generation prompt."""
    return f"{USER}\n{user_content(user, num_images)}{END}\n{ASSISTANT}\n"


def turn_response(assistant: str) -> str:
    """The label text of one turn: the answer, ``<|end|>``, a newline and end-of-text."""
    return f"{assistant}{END}\n{END_OF_TEXT}"


def prompt_chunks(prompt: str) -> list[str]:
    """The text between image tags; the processor tokenizes each chunk on its own."""
    return IMAGE_TAG_SPLIT.split(prompt)
