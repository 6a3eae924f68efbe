"""``phi3v-data validate --tokenizer`` predicts exactly the length the trainer produces."""

from __future__ import annotations

from PIL import Image

from phi3v_data import read_jsonl, validate
from phi3v_train.processing import ChatTurn
from tests.conftest import FIXTURES

SAMPLE = FIXTURES / "sample"


def test_validate_exact_lengths_equal_processor_lengths(processor, tiny_dir):
    files = sorted(SAMPLE.glob("*.jsonl"))
    report = validate(files, num_crops=processor.num_crops, tokenizer=tiny_dir)
    assert report.exact_lengths and report.ok
    predicted = {(length.file, length.id): length for length in report.lengths}
    checked = 0
    for path in files:
        for sample in read_jsonl(path):
            turns = [
                ChatTurn(
                    user=turn.user,
                    assistant=turn.assistant,
                    images=[Image.open(SAMPLE / "images" / p) for p in turn.images],
                )
                for turn in sample.conversations
            ]
            example = processor.training_example(turns, sample_id=sample.id)
            ids = example["input_ids"]
            length = predicted[(str(path), sample.id)]
            assert length.total == len(ids), sample.id
            assert length.image_tokens == int((ids < 0).sum()), sample.id
            checked += 1
    assert checked == 12
