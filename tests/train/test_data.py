"""The trainer's data path: file discovery, validate's refusal, the length policy, lazy images."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from phi3v_data import read_jsonl, validate
from phi3v_train.data import (
    Collator,
    DataError,
    DataFiles,
    LayoutDataset,
    check_data,
    find_data_files,
)
from phi3v_train.processing import IGNORE_INDEX, ChatTurn, Phi3VProcessor
from tests.train.tiny_layout import ucf_sample, write_images, write_jsonl, write_layout

CROPS = 1


def rewrite(root: Path, split: str, lines: list[dict]) -> None:
    """Replace a split's samples (and write their images)."""
    write_images(root, lines, (48, 32))
    write_jsonl(root / f"ucf101_{split}.jsonl", lines)


def check(files: DataFiles, tiny_dir: Path, max_length: int = 100_000, overlong: str = "error"):
    return check_data(
        files, tokenizer_dir=tiny_dir, num_crops=CROPS, max_length=max_length, overlong=overlong
    )


# --- finding the files ---------------------------------------------------------------------------
def test_data_dir_gives_train_and_val(tmp_path):
    write_layout(tmp_path)
    files = find_data_files(tmp_path)
    assert files.train == tmp_path / "ucf101_train.jsonl"
    assert files.eval == tmp_path / "ucf101_val.jsonl"
    assert files.train_images == files.eval_images == tmp_path / "images"
    assert find_data_files(tmp_path, want_eval=False).eval is None


def test_the_val_file_of_the_same_dataset_wins(tmp_path):
    write_layout(tmp_path)
    write_jsonl(tmp_path / "other_val.jsonl", [ucf_sample("val", 9, 1)])
    assert find_data_files(tmp_path).eval == tmp_path / "ucf101_val.jsonl"


def test_several_training_files_are_refused_by_name(tmp_path):
    write_layout(tmp_path)
    write_layout(tmp_path, name="docvqa")
    with pytest.raises(DataError) as error:
        find_data_files(tmp_path)
    (line,) = error.value.problems
    assert "docvqa_train.jsonl, ucf101_train.jsonl" in line and "--train_file" in line


def test_missing_training_data_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"no \*_train.jsonl file .* --train_file"):
        find_data_files(tmp_path)
    with pytest.raises(DataError, match="--data_dir DIR or --train_file FILE"):
        find_data_files(None)
    with pytest.raises(DataError, match="no such folder"):
        find_data_files(tmp_path / "absent")
    with pytest.raises(DataError, match=r"--eval_file .*: no such file"):
        write_layout(tmp_path)
        find_data_files(tmp_path, eval_file=tmp_path / "nope.jsonl")


def test_explicit_files_override_the_data_dir(tmp_path):
    write_layout(tmp_path / "a")
    write_layout(tmp_path / "b", name="chat")
    files = find_data_files(
        tmp_path / "a", train_file=tmp_path / "b" / "chat_train.jsonl", eval_file=None
    )
    assert files.train == tmp_path / "b" / "chat_train.jsonl"
    assert files.train_images == tmp_path / "b" / "images"


# --- validate before anything else ---------------------------------------------------------------
def test_valid_data_is_read_with_exact_lengths(tmp_path, tiny_dir):
    write_layout(tmp_path, train=3, val=1, frames=2)
    data = check(find_data_files(tmp_path), tiny_dir)
    assert [s.id for s in data.train] == [s.id for s in read_jsonl(tmp_path / "ucf101_train.jsonl")]
    assert len(data.eval) == 1 and data.dropped_counts == {"train": 0, "eval": 0}
    assert data.report.exact_lengths
    # validate's length is the length the trainer feeds the model
    dataset = LayoutDataset(
        data.train,
        tmp_path / "images",
        Phi3VProcessor.from_pretrained(tiny_dir, num_crops=CROPS),
    )
    lengths = {length.id: length.total for length in data.report.lengths}
    assert len(dataset[0]["input_ids"]) == lengths[data.train[0].id]


def test_bad_data_is_refused_with_validates_own_messages(tmp_path, tiny_dir):
    write_layout(tmp_path, train=3, val=1)
    lines = [json.loads(line) for line in (tmp_path / "ucf101_train.jsonl").open()]
    lines[1]["conversations"][0]["images"][0] = "train/Archery/missing.jpg"
    lines[2]["id"] = lines[0]["id"]
    lines.append(
        {"id": "x", "source": "t", "conversations": [{"user": "<image> hi", "assistant": "a"}]}
    )
    write_jsonl(tmp_path / "ucf101_train.jsonl", lines)
    files = find_data_files(tmp_path)
    with pytest.raises(DataError) as error:
        check(files, tiny_dir)
    text = "\n".join(error.value.problems)
    report = validate([files.train, files.eval], num_crops=CROPS, tokenizer=tiny_dir)
    assert len(report.errors) == 3
    for problem in report.errors:  # each of validate's lines, word for word
        assert str(problem) in text
    assert error.value.problems[0].startswith("the data did not pass phi3v-data validate")


def test_overlong_error_lists_samples_as_validate_does(tmp_path, tiny_dir):
    write_layout(tmp_path, train=2, val=1, frames=1)
    rewrite(tmp_path, "train", [ucf_sample("train", 0, 1), ucf_sample("train", 1, 3)])
    files = find_data_files(tmp_path)
    one_frame = validate([files.train], num_crops=CROPS, tokenizer=tiny_dir).lengths[0].total
    limit = one_frame + 10  # one frame fits, three do not
    with pytest.raises(DataError) as error:
        check(files, tiny_dir, max_length=limit)
    text = "\n".join(error.value.problems)
    expected = validate([files.train], num_crops=CROPS, tokenizer=tiny_dir, max_length=limit)
    (overflow,) = expected.errors
    assert overflow.kind == "overflow" and str(overflow) in text
    assert "--overlong drop" in text


def test_overlong_drop_leaves_whole_samples_out_and_counts_them(tmp_path, tiny_dir, caplog):
    write_layout(tmp_path, train=2, val=2, frames=1)
    rewrite(tmp_path, "train", [ucf_sample("train", 0, 1), ucf_sample("train", 1, 3)])
    rewrite(tmp_path, "val", [ucf_sample("val", 4, 3), ucf_sample("val", 5, 1)])
    files = find_data_files(tmp_path)
    one_frame = validate([files.train], num_crops=CROPS, tokenizer=tiny_dir).lengths[0].total
    data = check(files, tiny_dir, max_length=one_frame + 10, overlong="drop")
    assert [s.id for s in data.train] == ["train-0000000000"]
    assert [s.id for s in data.eval] == ["val-0000000005"]
    assert data.dropped_counts == {"train": 1, "eval": 1}
    assert "dropped 1 train sample(s) over max_length" in caplog.text
    assert all(
        len(s.conversations[0].images) == 1 for s in data.train + data.eval
    )  # kept whole, never cut


def test_nothing_left_after_dropping_is_refused(tmp_path, tiny_dir):
    write_layout(tmp_path, train=2, val=0)
    with pytest.raises(DataError, match="no training samples left"):
        check(find_data_files(tmp_path), tiny_dir, max_length=5, overlong="drop")


# --- the dataset ---------------------------------------------------------------------------------
def test_dataset_items_are_the_processors_training_examples(tmp_path, processor):
    write_layout(tmp_path, train=2, val=0, frames=2)
    samples = list(read_jsonl(tmp_path / "ucf101_train.jsonl"))
    dataset = LayoutDataset(samples, tmp_path / "images", processor)
    item = dataset[1]
    turn = samples[1].conversations[0]
    images = [Image.open(tmp_path / "images" / p) for p in turn.images]
    expected = processor.training_example(
        [ChatTurn(turn.user, turn.assistant, images)], samples[1].id
    )
    assert set(item) == {"input_ids", "labels", "pixel_values", "image_sizes"}
    for key, value in expected.items():
        torch.testing.assert_close(item[key], value)
    answer = item["labels"][item["labels"] != IGNORE_INDEX]
    assert processor.decode(answer, skip_special_tokens=False).startswith(turn.assistant)


def test_images_are_opened_only_when_an_item_is_read(tmp_path, processor, monkeypatch):
    write_layout(tmp_path, train=3, val=0)
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)
    )
    dataset = LayoutDataset(
        list(read_jsonl(tmp_path / "ucf101_train.jsonl")), tmp_path / "images", processor
    )
    assert opened == []
    dataset[2]
    assert len(opened) == 1 and opened[0].endswith(".0.jpg")


def test_dataset_and_collator_work_in_dataloader_workers(tmp_path, processor):
    write_layout(tmp_path, train=3, val=0)
    dataset = LayoutDataset(
        list(read_jsonl(tmp_path / "ucf101_train.jsonl")), tmp_path / "images", processor
    )
    collator = Collator(processor)
    pickle.dumps(collator)  # spawn-started workers pickle the collator
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collator)
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2
    # right padding: every row's real tokens come first
    lengths = batch["attention_mask"].sum(1)
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row, :length].all()
        assert not batch["attention_mask"][row, length:].any()


def test_an_unreadable_image_names_its_sample(tmp_path, processor):
    write_layout(tmp_path, train=1, val=0)
    sample = next(read_jsonl(tmp_path / "ucf101_train.jsonl"))
    path = tmp_path / "images" / sample.conversations[0].images[0]
    path.write_bytes(path.read_bytes()[:40])  # truncated after validate's header check
    dataset = LayoutDataset([sample], tmp_path / "images", processor)
    with pytest.raises(DataError, match=f"sample '{sample.id}': cannot read image"):
        dataset[0]
    loader = torch.utils.data.DataLoader(dataset, num_workers=1, collate_fn=Collator(processor))
    with pytest.raises(DataError) as error:  # from a worker: still one line, not a traceback
        next(iter(loader))
    (line,) = error.value.problems
    assert line.startswith(f"sample '{sample.id}': cannot read image") and "\n" not in line
