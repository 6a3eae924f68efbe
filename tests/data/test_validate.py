"""validate(): every kind of bad line is found, located and named; clean data passes."""

from __future__ import annotations

import os

import orjson
import pytest
from PIL import Image

from phi3v_data.prompt import turn_prompt, turn_response
from phi3v_data.schema import Sample
from phi3v_data.tokens import num_image_tokens
from phi3v_data.validate import validate
from tests.conftest import sample


def errors_of(report):
    return [(p.kind, p.line, p.id, p.field) for p in report.errors]


def test_clean_file_passes(layout):
    report = validate([layout([sample("a"), sample("b", images=["a.jpg", "b.png"])])])
    assert report.ok and report.samples == 2 and report.files[0].valid == 2


def test_every_line_kind_is_reported_with_its_line(layout):
    path = layout(
        [
            sample("ok"),
            b'{"id": "j", "source": ',  # 2: broken JSON
            b"\x00\x01\x02garbage",  # 3: binary
            sample("ok"),  # 4: duplicate id
            sample("k", extra=True),  # 5: unknown key
            sample("t", user="<|image_2|>"),  # 6: bad tag
            sample("p", images=["../../etc/passwd"]),  # 7: unsafe path
            sample("m", images=["missing.jpg"]),  # 8: missing image
            b"[1, 2]",  # 9: not an object
        ]
    )
    report = validate([path])
    assert errors_of(report) == [
        ("json", 2, None, ""),
        ("line", 3, None, None),
        ("duplicate-id", 4, "ok", "id"),
        ("unknown-key", 5, "k", "extra"),
        ("image-tag", 6, "t", "conversations[0].user"),
        ("unsafe-path", 7, "p", "conversations[0].images[0]"),
        ("missing-image", 8, "m", "conversations[0].images[0]"),
        ("schema", 9, None, ""),
    ]
    assert report.files[0].valid == 1 and report.files[0].errors == 8


def test_ids_only_need_to_be_unique_within_a_file(layout, tmp_path):
    first = layout([sample("a")])
    second = tmp_path / "data_val.jsonl"
    second.write_bytes(orjson.dumps(sample("a")) + b"\n")
    assert validate([first, second]).ok


def test_symlinks_inside_are_fine_outside_are_not(layout, tmp_path):
    path = layout([sample("in", images=["link.jpg"]), sample("out", images=["evil.jpg"])])
    images = tmp_path / "images"
    os.symlink(images / "a.jpg", images / "link.jpg")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, images / "evil.jpg")
    assert errors_of(validate([path])) == [("unsafe-path", 2, "out", "conversations[0].images[0]")]


def test_symlinked_folder_leading_outside_is_refused(layout, tmp_path):
    path = layout([sample("d", images=["sub/x.jpg"])])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "x.jpg")
    os.symlink(elsewhere, tmp_path / "images" / "sub")
    report = validate([path])
    assert errors_of(report) == [("unsafe-path", 1, "d", "conversations[0].images[0]")]
    assert "leads outside" in report.errors[0].message


def test_images_root_override(layout, tmp_path):
    path = layout([sample("a", images=["z.jpg"])])
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "z.jpg")
    assert not validate([path]).ok
    assert validate([path], images_root=other).ok


def test_missing_images_folder_is_one_error(tmp_path):
    path = tmp_path / "d_train.jsonl"
    path.write_bytes(orjson.dumps(sample()) + b"\n")
    report = validate([path])
    assert [(p.kind, p.line) for p in report.errors] == [("missing-image", None)]
    assert "images folder not found" in report.errors[0].message


def write_broken_images(root):
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_bytes(b"hello, I am not a picture\n")
    good = root / "good.jpg"
    Image.effect_noise((200, 200), 60).convert("RGB").save(good, quality=90)
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    Image.new("1", (9500, 9500)).save(root / "bomb.png")  # 90 megapixels, a few KB on disk


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("zero.jpg", "empty (0 bytes)"),
        ("text.png", "not an image file"),
        ("truncated.jpg", "cannot be decoded"),
        ("bomb.png", "decompression bomb"),
    ],
)
def test_decode_finds_broken_images(layout, tmp_path, name, message):
    path = layout([sample("x", images=[name])])
    write_broken_images(tmp_path / "images")
    report = validate([path], decode=True)
    assert errors_of(report) == [("bad-image", 1, "x", "conversations[0].images[0]")]
    assert message in report.errors[0].message


def test_truncation_needs_decode(layout, tmp_path):
    path = layout([sample("x", images=["truncated.jpg"])])
    write_broken_images(tmp_path / "images")
    assert validate([path]).ok  # exists, header readable: only --decode can tell
    assert not validate([path], decode=True).ok


def test_token_lengths_and_overflow(layout):
    path = layout(
        [sample("small", images=["a.jpg"]), sample("big", images=["page.png", "page.png"])],
        images={"page.png": (1700, 2200)},
    )
    report = validate([path], num_crops=16, max_length=3000)
    small, big = report.lengths
    assert small.image_tokens == num_image_tokens(64, 48, 16)
    assert big.image_tokens == 2 * num_image_tokens(1700, 2200, 16)
    assert not report.exact_lengths
    assert errors_of(report) == [("overflow", 2, "big", None)]
    assert "estimated" in report.errors[0].message
    assert validate([path], num_crops=16, max_length=big.total).ok


def test_empty_answer_is_a_warning_unless_marked_unlabeled(layout):
    path = layout([sample("u", assistant=""), sample("v", assistant="", meta={"labeled": False})])
    report = validate([path])
    assert report.ok
    assert [(w.kind, w.id) for w in report.warnings] == [("empty-answer", "u")]


def make_tokenizer(directory):
    """A small real tokenizer (word level, with the Phi-3 special tokens) for exact counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in ["what", "is", "shown", "?", "a", "cat", ".", "compare", "the", "pictures", "\n"]:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"])
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"add_bos_token": true}')
    return tokenizer


def test_exact_text_counts_with_a_tokenizer(layout, tmp_path):
    tokenizer = make_tokenizer(tmp_path / "tok")
    line = sample("a", images=["a.jpg", "b.png"], user="compare the pictures")
    path = layout([line])
    report = validate([path], num_crops=4, tokenizer=tmp_path / "tok")
    turn = Sample.model_validate(line).conversations[0]
    prompt = turn_prompt(turn.user, 2)
    chunks = prompt.replace("<|image_2|>", "<|image_1|>").split("<|image_1|>")
    expected = sum(len(tokenizer.encode(c, add_special_tokens=False).ids) + 1 for c in chunks)
    expected += len(tokenizer.encode(turn_response(turn.assistant), add_special_tokens=False).ids)
    assert report.exact_lengths
    assert report.lengths[0].text_tokens == expected
    assert report.lengths[0].image_tokens == 2 * num_image_tokens(64, 48, 4)
