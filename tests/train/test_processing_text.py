"""The text side: the official chunking (BOS per chunk), image-token runs, labels, batching."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image

from phi3v_train.processing import IGNORE_INDEX, ChatTurn, ImageTagError

GOLDEN_PROMPT = (
    "<|user|>\n<|image_1|>\n<|image_2|>\nSummarize the deck of slides.<|end|>\n<|assistant|>\n"
)
BOS, USER, ASSISTANT, END, ENDOFTEXT, NEWLINE = 1, 32010, 32001, 32007, 32000, 13


def runs(ids):
    return [(k, len(list(g))) for k, g in itertools.groupby(ids)]


def test_special_tokens_have_the_real_phi3_ids(processor):
    tok = processor.tokenizer
    assert [
        tok.token_to_id(t) for t in ("<s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>")
    ] == [
        1,
        32000,
        32001,
        32007,
        32010,
    ]
    assert processor.stop_token_ids == [END, ENDOFTEXT]
    assert processor.pad_token_id == ENDOFTEXT


def test_golden_vector_structure(processor):
    """The shape of the spec's golden ids (§5): two 2048-px slides at num_crops 4.

    Real ids: [1, 32010, 29871, 13] + [-1]*757 + [1, 29871, 13] + [-2]*757
    + [1, 29871, 13, <text>, 32007, 29871, 13, 32001]; 29871 is "▁" in Llama-2.
    """
    slides = [Image.new("RGB", (2048, 1536), "white"), Image.new("RGB", (2048, 1152), "white")]
    out = processor(GOLDEN_PROMPT, slides)
    ids = out["input_ids"][0].tolist()
    space = processor.tokenizer.token_to_id("▁")
    text = processor.tokenize("Summarize the deck of slides.")
    text_after_newline = processor.tokenize("\nSummarize the deck of slides.")[2:]
    expected = (
        [BOS, USER, space, NEWLINE]
        + [-1] * 757
        + [BOS, space, NEWLINE]
        + [-2] * 757
        + [BOS, space, NEWLINE, *text_after_newline, END, space, NEWLINE, ASSISTANT]
    )
    assert ids == expected
    assert len(text) > 0 and len(ids) == 1537 - 9 + len(text_after_newline)
    assert out["attention_mask"].tolist() == [[1] * len(ids)]
    assert out["image_sizes"].tolist() == [[672, 672], [672, 672]]
    assert out["pixel_values"].shape == (2, 5, 3, 336, 336)


def test_text_only_prompt_has_one_bos(processor):
    out = processor("<|user|>\nHello<|end|>\n<|assistant|>\n")
    ids = out["input_ids"][0].tolist()
    assert ids[:4] == [BOS, USER, processor.tokenizer.token_to_id("▁"), NEWLINE]
    assert ids.count(BOS) == 1 and ids[-1] == ASSISTANT
    assert "pixel_values" not in out


def test_image_runs_have_the_exact_token_count(processor):
    images = [
        Image.new("RGB", (1000, 400)),
        Image.new("RGB", (336, 336)),
        Image.new("RGB", (400, 1000)),
    ]
    prompt = "<|user|>\n<|image_1|><|image_2|>text<|image_3|>\nQ?<|end|>\n<|assistant|>\n"
    ids = processor(prompt, images)["input_ids"][0].tolist()
    image_runs = [(k, n) for k, n in runs(ids) if k < 0]
    # the portrait image has 2 crop rows, so 12 more separators than the landscape one
    assert image_runs == [(-1, 457), (-2, 757), (-3, 469)]
    # an empty chunk between two tags still gets its BOS, like the official processor
    first_end = ids.index(-2) - 1
    assert ids[first_end] == BOS and ids[first_end - 1] == -1


@pytest.mark.parametrize(
    ("prompt", "count", "message"),
    [
        ("<|image_2|> hi", 1, "<|image_2|>"),
        ("<|image_1|><|image_1|>", 1, "each once"),
        ("<|image_2|><|image_1|>", 2, "in order"),
        ("<|image_1|>", 2, "2 image"),
        ("no tags", 1, "no tags"),
    ],
)
def test_tag_errors_name_the_sample(processor, prompt, count, message):
    images = [Image.new("RGB", (64, 64))] * count
    with pytest.raises(ImageTagError, match="sample 'train-7'") as err:
        processor(prompt, images, sample_id="train-7")
    assert message in str(err.value)


def test_training_example_follows_the_cookbook(processor):
    image = Image.new("RGB", (640, 480), "red")
    turns = [
        ChatTurn(user="What is it?", assistant="A red square", images=[image]),
        ChatTurn(user="Sure?", assistant="Yes"),
    ]
    example = processor.training_example(turns, sample_id="s1")
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    prompt1 = processor("<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n", [image])
    answer1 = processor.tokenize("A red square<|end|>\n<|endoftext|>")
    prompt2 = processor("<|user|>\nSure?<|end|>\n<|assistant|>\n")["input_ids"][0].tolist()
    answer2 = processor.tokenize("Yes<|end|>\n<|endoftext|>")
    p1 = prompt1["input_ids"][0].tolist()
    assert ids == p1 + answer1 + prompt2 + answer2
    assert labels == [IGNORE_INDEX] * len(p1) + answer1 + [IGNORE_INDEX] * len(prompt2) + answer2
    space = processor.tokenizer.token_to_id("▁")
    assert answer1[-4:] == [END, space, NEWLINE, ENDOFTEXT]
    assert answer1[-1] == ENDOFTEXT and answer2[-1] == ENDOFTEXT
    assert torch.equal(example["pixel_values"], prompt1["pixel_values"])
    assert example["image_sizes"].tolist() == [[672, 672]]


def test_tags_placed_in_the_user_text_stay_where_they_are(processor):
    left, right = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (900, 300), "blue")
    turn = ChatTurn(
        user="Left <|image_1|> right <|image_2|>?", assistant="ok", images=[left, right]
    )
    example = processor.training_example([turn], sample_id="x")
    prompt = processor("<|user|>\nLeft <|image_1|> right <|image_2|>?<|end|>\n<|assistant|>\n",
                       [left, right])["input_ids"][0].tolist()  # fmt: skip
    assert example["input_ids"].tolist()[: len(prompt)] == prompt


def test_tag_without_its_image_or_in_the_answer_is_rejected(processor):
    with pytest.raises(ImageTagError, match=r"sample 'x'.*<\|image_1\|> but 0 image"):
        processor.training_example(
            [ChatTurn(user="see <|image_1|>", assistant="ok")], sample_id="x"
        )
    with pytest.raises(ImageTagError, match=r"sample 'y'.*turn 1 assistant"):
        processor.training_example([ChatTurn(user="hi", assistant="<|image_1|>")], sample_id="y")


def test_generation_inputs_end_with_the_assistant_tag(processor):
    turns = [
        ChatTurn(user="Hi", assistant="Hello"),
        ChatTurn(user="Again", images=[Image.new("RGB", (50, 60))]),
    ]
    inputs = processor.generation_inputs(turns)
    history = processor.training_example(turns[:1])["input_ids"].tolist()
    ids = inputs["input_ids"].tolist()
    assert ids[: len(history)] == history and ids[-1] == ASSISTANT
    assert "labels" not in inputs and inputs["pixel_values"].shape[0] == 1


def test_collator_pads_and_masks_from_lengths(processor):
    short = {
        "input_ids": torch.tensor([1, 5, ENDOFTEXT]),
        "labels": torch.tensor([-100, 5, ENDOFTEXT]),
    }
    image = processor.training_example(
        [ChatTurn(user="q", assistant="a", images=[Image.new("RGB", (40, 30))])]
    )
    batch = processor.collate([short, image])
    width = len(image["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    # the real end-of-text (= pad id) keeps mask 1; padding gets 0 and label -100
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (width - 3)
    assert batch["input_ids"][0, 3:].eq(processor.pad_token_id).all()
    assert batch["labels"][0].tolist() == [-100, 5, ENDOFTEXT] + [-100] * (width - 3)
    assert batch["pixel_values"].shape == (1, 5, 3, 336, 336)

    left = processor.collate([short, image], padding_side="left")
    assert left["attention_mask"][0].tolist() == [0] * (width - 3) + [1, 1, 1]
    assert left["input_ids"][0, -3:].tolist() == [1, 5, ENDOFTEXT]
    assert processor.collate([short], pad_to_multiple_of=8)["input_ids"].shape == (1, 8)


def test_save_and_reload_keeps_the_processor(processor, tmp_path):
    from phi3v_train.processing import Phi3VProcessor

    processor.save_pretrained(tmp_path)
    again = Phi3VProcessor.from_pretrained(tmp_path, num_crops=16)
    assert again.num_crops == 16 and again.tokenize("hello world") == processor.tokenize(
        "hello world"
    )
    assert Phi3VProcessor.from_pretrained(tmp_path).num_crops == 4
