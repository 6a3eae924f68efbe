"""The data contract: every rule of DESIGN.md has a line that breaks it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from phi3v_data.errors import describe_validation_error
from phi3v_data.layout import image_path_problem
from phi3v_data.schema import SAFE_IMAGE_PATH_PATTERN, Sample, json_schema
from tests.conftest import REPO, sample


def problems(line: dict) -> list[tuple[str, str, str]]:
    with pytest.raises(ValidationError) as caught:
        Sample.model_validate_json(orjson.dumps(line))
    return [tuple(d) for d in describe_validation_error(caught.value)]


def test_valid_sample_round_trips():
    line = sample(images=["train/A/v.0.jpg", "train/A/v.1.jpg"], meta={"frames": [0, 5]})
    parsed = Sample.model_validate_json(orjson.dumps(line))
    assert parsed.image_paths() == ["train/A/v.0.jpg", "train/A/v.1.jpg"]
    assert parsed.meta == {"frames": [0, 5]}


def test_later_turns_may_have_no_images():
    line = sample()
    line["conversations"].append({"user": "And then?", "assistant": "Nothing."})
    parsed = Sample.model_validate_json(orjson.dumps(line))
    assert parsed.conversations[1].images == []


@pytest.mark.parametrize(
    ("line", "kind", "field", "message"),
    [
        (sample(extra_key=1), "unknown-key", "extra_key", "unknown key 'extra_key'"),
        (sample(image="x.jpg"), "unknown-key", "image", "convert llava"),
        (
            {**sample(), "conversations": [{"user": "q", "assistant": "a", "img": []}]},
            "unknown-key",
            "conversations[0].img",
            "unknown key 'img'",
        ),
        (
            {**sample(), "conversations": [{"images": "a.jpg", "user": "q", "assistant": "a"}]},
            "schema",
            "conversations[0].images",
            "got the string 'a.jpg'",
        ),
        ({**sample(), "id": 7}, "schema", "id", "expected a string, got a number"),
        ({**sample(), "id": ""}, "schema", "id", "must not be empty"),
        ({k: v for k, v in sample().items() if k != "source"}, "schema", "source", "missing"),
        ({**sample(), "conversations": []}, "schema", "conversations", "at least one turn"),
        (
            {**sample(), "conversations": [{"images": ["a.jpg"], "user": "q"}]},
            "schema",
            "conversations[0].assistant",
            "missing required key 'assistant'",
        ),
        ({**sample(), "meta": [1]}, "schema", "meta", "expected an object, got a list"),
    ],
)
def test_structure_errors(line, kind, field, message):
    found = problems(line)
    assert any(k == kind and f == field and message in m for k, f, m in found), found


@pytest.mark.parametrize(
    ("user", "images", "message"),
    [
        ("<|image_2|>\nq", ["a.jpg"], "<|image_1|>..<|image_1|> in order, each once"),
        ("<|image_1|><|image_1|>\nq", ["a.jpg", "b.jpg"], "each once"),
        ("<|image_1|><|image_3|>\nq", ["a.jpg", "b.jpg"], "each once"),
        ("<|image_1|>\nq", ["a.jpg", "b.jpg"], "1 <|image_N|> tag(s) but the turn has 2 image(s)"),
        ("<|image_1|>\nq", [], "but the turn has 0 image(s)"),
        ("<image>\nWhat is this?", ["a.jpg"], "LLaVA-style <image> tag"),
        ("", [], "neither images nor user text"),
    ],
)
def test_image_tag_errors(user, images, message):
    found = problems(sample(user=user, images=images))
    assert found == [("image-tag", "conversations[0].user", found[0][2])]
    assert message in found[0][2]


def test_llava_error_names_the_fix():
    (_, _, message), *_ = problems(sample(user="<image>\nq"))
    assert "phi3v-data convert llava" in message


def test_tags_in_order_are_accepted_and_out_of_order_refused():
    line = sample(user="Compare <|image_1|> with <|image_2|>.", images=["a.jpg", "b.jpg"])
    assert Sample.model_validate_json(orjson.dumps(line)).conversations[0].images == [
        "a.jpg",
        "b.jpg",
    ]
    swapped = sample(user="Compare <|image_2|> with <|image_1|>.", images=["a.jpg", "b.jpg"])
    assert "in order" in problems(swapped)[0][2]


def test_image_tags_in_the_answer_are_errors():
    found = problems(sample(assistant="<|image_1|>"))
    assert found[0][:2] == ("image-tag", "conversations[0].assistant")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../secret.jpg", "'..'"),
        ("a/../../b.jpg", "'..'"),
        ("/etc/passwd", "absolute"),
        ("dir\\file.jpg", "backslash"),
        ("a//b.jpg", "empty component"),
        ("a/", "empty component"),
        ("./a.jpg", "'.' component"),
        ("", "empty"),
        ("a\x00.jpg", "NUL"),
    ],
)
def test_unsafe_paths(path, reason):
    found = problems(sample(images=[path]))
    assert found[0][:2] == ("unsafe-path", "conversations[0].images[0]")
    assert reason in found[0][2]


@pytest.mark.parametrize("path", ["a.jpg", "...jpg", "..a/b", ".hidden/x.png", "a b/c d.jpg"])
def test_unusual_but_safe_paths(path):
    assert Sample.model_validate_json(orjson.dumps(sample(images=[path])))


PATH_ALPHABET = st.sampled_from(list("ab./\\\x00 :é"))


@given(st.text(PATH_ALPHABET, max_size=12))
def test_path_pattern_and_explanation_agree(path):
    """The compiled pattern (fast path) and image_path_problem (messages) never disagree."""
    matches = re.fullmatch(SAFE_IMAGE_PATH_PATTERN, path) is not None
    assert matches == (image_path_problem(path) is None)


def test_committed_json_schema_is_in_sync():
    committed = json.loads((REPO / "schemas" / "sample.schema.json").read_text())
    assert committed == json_schema(), "run: phi3v-data schema --out schemas/sample.schema.json"


def test_json_schema_agrees_with_pydantic_on_examples():
    validator = jsonschema.Draft202012Validator(json_schema())
    assert validator.is_valid(sample(meta={"answers": ["a", "b"]}))
    for bad in (sample(extra=1), {**sample(), "id": 3}, sample(images=["../x.jpg"])):
        assert not validator.is_valid(bad)


def test_schema_file_is_valid_json_schema():
    schema = json.loads(Path(REPO / "schemas/sample.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
