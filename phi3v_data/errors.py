"""Turn pydantic's validation errors into one short, fixable message per problem.

pydantic reports locations as tuples and messages written for programmers
("Input should be a valid list"); users need "conversations[0].images: expected a list
of paths, got a string". Kinds group the problems in the validate summary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError

from phi3v_data.layout import image_path_problem
from phi3v_data.schema import TagError

# Top-level keys of other formats, and what to do about them.
_FOREIGN_KEY_HINTS = {
    "image": "LLaVA format? convert it with 'phi3v-data convert llava'",
    "images": "images belong inside each turn of 'conversations'",
    "messages": "OpenAI messages format? convert it with 'phi3v-data convert messages'",
    "human": "LLaVA format? convert it with 'phi3v-data convert llava'",
    "from": "LLaVA format? convert it with 'phi3v-data convert llava'",
    "value": "LLaVA format? convert it with 'phi3v-data convert llava'",
}

_TYPE_NAMES = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


class Described(NamedTuple):
    kind: str
    field: str
    message: str


def field_name(loc: tuple[Any, ...]) -> str:
    """``('conversations', 0, 'images', 3)`` -> ``conversations[0].images[3]``."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


def type_name(value: Any) -> str:
    """'a string', 'a number', ...: how a JSON value's type is named in messages."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def describe_validation_error(error: ValidationError) -> list[Described]:
    """One :class:`Described` per problem pydantic found in a line."""
    return [_describe(item) for item in error.errors(include_url=False)]


def _describe(item: dict[str, Any]) -> Described:
    loc: tuple[Any, ...] = tuple(item.get("loc", ()))
    kind_of_error = item["type"]
    value = item.get("input")
    field = field_name(loc)
    last = loc[-1] if loc else ""
    in_images = "images" in loc
    if kind_of_error == "json_invalid":
        detail = item.get("ctx", {}).get("error", item["msg"])
        return Described("json", "", f"invalid JSON: {detail}")
    if kind_of_error in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return Described("schema", "", f"a line must be a JSON object, got {type_name(value)}")
    if kind_of_error == "missing":
        return Described("schema", field, f"missing required key {last!r}")
    if kind_of_error == "extra_forbidden":
        hint = _FOREIGN_KEY_HINTS.get(str(last)) if len(loc) == 1 else None
        message = f"unknown key {last!r}" + (f" ({hint})" if hint else "")
        return Described("unknown-key", field, message)
    if kind_of_error == "value_error":
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, TagError):
            return Described("image-tag", field_name((*loc, cause.field)), cause.message)
        return Described("schema", field, str(cause or item["msg"]))
    if kind_of_error == "string_pattern_mismatch" and in_images:
        problem = image_path_problem(value) if isinstance(value, str) else None
        return Described("unsafe-path", field, f"{problem or 'unsafe image path'}: {value!r}")
    if kind_of_error == "list_type" and last == "images" and isinstance(value, str):
        return Described(
            "schema", field, f"images must be a list of paths, got the string {value!r}"
        )
    if kind_of_error == "list_type":
        return Described("schema", field, f"expected a list, got {type_name(value)}")
    if kind_of_error in ("string_type", "str_type"):
        return Described("schema", field, f"expected a string, got {type_name(value)}")
    if kind_of_error in ("dict_type", "model_type", "model_attributes_type"):
        return Described("schema", field, f"expected an object, got {type_name(value)}")
    if kind_of_error == "too_short" and last == "conversations":
        return Described("schema", field, "conversations must have at least one turn")
    if kind_of_error in ("too_short", "string_too_short"):
        return Described("schema", field, "must not be empty")
    return Described("schema", field, item["msg"])
