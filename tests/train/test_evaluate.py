"""Evaluation: each source routed to its metric on hand-computed cases, P(hateful) and AUROC,
unlabeled rows, both output files, real greedy generation on the tiny checkpoint (stopping at
<|end|>, <|endoftext|> or max_new_tokens), PEFT and torch.distributed, and the eval CLI."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from phi3v_data import read_jsonl
from phi3v_data.schema import Sample
from phi3v_train.cli import main
from phi3v_train.evaluate import (
    BinaryAnswers,
    Prediction,
    format_metrics,
    references_for,
    run_evaluation,
    score_sample,
    summarize,
)
from phi3v_train.processing import Phi3VProcessor
from tests.conftest import sample as sample_line

END, ENDOFTEXT = 32007, 32000
VOCAB = 32064


def line(
    sample_id: str,
    source: str,
    answer: str,
    meta: dict[str, Any] | None = None,
    images: tuple[str, ...] = ("a.jpg",),
) -> dict[str, Any]:
    """A jsonl line of ``source`` whose last answer is ``answer``."""
    record = sample_line(sample_id, images=list(images), user=f"question {sample_id}?")
    record["source"] = source
    record["conversations"][0]["assistant"] = answer
    if meta is not None:
        record["meta"] = meta
    return record


@pytest.fixture(scope="module")
def proc(tiny_dir: Path) -> Phi3VProcessor:
    """The tiny checkpoint's processor at one crop: small inputs, fast tests."""
    return Phi3VProcessor.from_pretrained(tiny_dir, num_crops=1)


# --------------------------------------------------------------------------------------------
# A stand-in model: answers come from a script, in the order rows are asked for
# --------------------------------------------------------------------------------------------


class ScriptedGenerator(torch.nn.Module):
    """Has ``generate`` like the real model but returns scripted tokens and first logits.

    ``script`` holds, per sample in evaluation order, the new token ids and the logits of the
    first step as {token: logit} (all other tokens get -inf).
    """

    def __init__(self, script: list[tuple[list[int], dict[int, float]]]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(kwargs)
        rows = [self.script.pop(0) for _ in range(len(input_ids))]
        new = [ids[: kwargs["max_new_tokens"]] for ids, _ in rows]
        width = max(len(ids) for ids in new)
        tokens = torch.full((len(rows), width), kwargs["pad_token_id"], dtype=torch.long)
        logits = torch.full((len(rows), VOCAB), -math.inf)
        for r, (ids, first) in enumerate(zip(new, (f for _, f in rows), strict=True)):
            tokens[r, : len(ids)] = torch.tensor(ids)
            for token, value in first.items():
                logits[r, token] = value
        steps = (logits,) if kwargs.get("output_logits") else None
        return SimpleNamespace(sequences=torch.cat([input_ids, tokens], 1), logits=steps)


def answer_ids(proc: Phi3VProcessor, text: str, stop: int | None = END) -> list[int]:
    return proc.tokenize(text) + ([stop] if stop is not None else [])


def yes_no_logits(proc: Phi3VProcessor, p_yes: float) -> dict[int, float]:
    """First-step logits whose yes/no softmax is exactly ``p_yes``: log p and log(1 - p)."""
    yes, no = (proc.tokenize(t)[0] for t in ("yes", "no"))
    return {yes: math.log(p_yes), no: math.log(1 - p_yes)}


def test_each_source_is_scored_by_its_metric(layout, proc, tmp_path):
    unlabeled_meme = {"id": 5, "labeled": False}
    data = layout(
        [
            line("u1", "ucf101", "Archery"),
            line("u2", "ucf101", "BabyCrawling"),
            line("n1", "nlvr2", "True", images=("a.jpg", "b.png")),
            line("d1", "docvqa", "$ 86.40", {"answers": ["$ 86.40", "$86.40"]}),
            line("d2", "docvqa", "30421", {"answers": ["30421"], "labeled": True}),
            line("d3", "docvqa", "", {"answers": [], "labeled": False}),
            line("h1", "hateful_memes", "yes", {"id": 1, "label": 1}),
            line("h2", "hateful_memes", "no", {"id": 2, "label": 0}),
            line("h3", "hateful_memes", "yes", {"id": 3, "label": 1}),
            line("h4", "hateful_memes", "no", {"id": 4, "label": 0}),
            line("h5", "hateful_memes", "", unlabeled_meme),
        ]
    )
    samples = list(read_jsonl(data))
    long_answer = answer_ids(proc, "Basketball is a sport played with a ball", stop=None)
    assert len(long_answer) > 8
    model = ScriptedGenerator(
        [
            (answer_ids(proc, " archery."), {}),  # normalised: "archery" == "archery" -> 1
            (long_answer, {}),  # no <|end|> within 8 tokens: truncated, 0
            (answer_ids(proc, "true"), {}),  # "true" == "true" -> 1
            (answer_ids(proc, "$86.4."), {}),
            (answer_ids(proc, "3042"), {}),
            (answer_ids(proc, "whatever"), {}),  # unlabeled: predicted, not scored
            # P(hateful) is normalised between the two answers only, whatever else scores high
            (answer_ids(proc, "yes"), yes_no_logits(proc, 0.9) | {proc.tokenize("maybe")[0]: 2.0}),
            (answer_ids(proc, "yes"), yes_no_logits(proc, 0.6)),
            (answer_ids(proc, "no"), yes_no_logits(proc, 0.5)),
            (answer_ids(proc, "no", stop=ENDOFTEXT), yes_no_logits(proc, 0.2)),
            (answer_ids(proc, "no"), yes_no_logits(proc, 0.3)),  # unlabeled
        ]
    )
    metrics = run_evaluation(
        model,
        proc,
        samples,
        data.parent / "images",
        batch_size=4,
        max_new_tokens=8,
        out_prefix=tmp_path / "out" / "run",
    )
    sources = metrics["sources"]
    # ucf101: [1, 0] -> 1/2
    assert sources["ucf101"] == {
        "metric": "accuracy",
        "n": 2,
        "scored": 2,
        "unlabeled": 0,
        "metrics": {"accuracy": 0.5},
    }
    assert sources["nlvr2"]["metrics"] == {"accuracy": 1.0}
    # docvqa d1: "$86.4" (dot stripped) vs "$86.40": distance 1, longest 6 -> 1 - 1/6 = 5/6;
    #   vs "$ 86.40": distance 2, longest 7 -> 5/7; the best is 5/6.
    # docvqa d2: "3042" vs "30421": distance 1, longest 5 -> 4/5. Mean (5/6 + 4/5) / 2 = 49/60.
    assert sources["docvqa"]["metric"] == "anls"
    assert sources["docvqa"]["metrics"]["anls"] == pytest.approx(49 / 60)
    assert (sources["docvqa"]["scored"], sources["docvqa"]["unlabeled"]) == (2, 1)
    # hateful: P(yes) 0.9 (label 1), 0.6 (0), 0.5 (1), 0.2 (0); h5 unlabeled is left out.
    #   AUROC: positive/negative pairs (0.9>0.6, 0.9>0.2, 0.5<0.6, 0.5>0.2) -> 3/4.
    #   Exact match: yes=yes, yes!=no, no!=yes, no=no -> 2/4.
    #   P >= 0.5 as hateful: 1 right, 1 wrong (0.6), 1 right (0.5), 1 right (0.2) -> 3/4.
    hateful = sources["hateful_memes"]
    assert hateful["metric"] == "auroc"
    assert hateful["metrics"] == pytest.approx(
        {"auroc": 0.75, "accuracy": 0.5, "accuracy_at_0.5": 0.75}
    )
    assert (hateful["n"], hateful["scored"], hateful["unlabeled"]) == (5, 4, 1)
    # overall: scores 1, 0, 1, 5/6, 4/5, 1, 0, 0, 1 over 9 labeled samples = (4 + 49/30) / 9
    assert metrics["overall"] == {
        "n": 11,
        "scored": 9,
        "unlabeled": 2,
        "truncated": 1,
        "mean_score": pytest.approx(169 / 270),
    }
    # P(hateful) needs the logits only where a batch holds a meme: batches 1-4, 5-8, 9-11
    assert [call["output_logits"] for call in model.calls] == [False, True, True]
    assert all(call["do_sample"] is False and call["num_beams"] == 1 for call in model.calls)
    assert all(call["eos_token_id"] == [END, ENDOFTEXT] for call in model.calls)

    written = json.loads((tmp_path / "out" / "run_metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["settings"] == {
        "max_new_tokens": 8,
        "batch_size": 4,
        "num_crops": 1,
        "max_samples": None,
    }
    records = {
        r["id"]: r for r in json.loads((tmp_path / "out" / "run_predictions.json").read_text())
    }
    assert list(records) == [s.id for s in samples]
    assert records["u1"] == {
        "id": "u1",
        "source": "ucf101",
        "prompt": "question u1?",
        "prediction": " archery.",  # as generated; scored normalised
        "references": ["Archery"],
        "labeled": True,
        "score": 1.0,
        "new_tokens": len(answer_ids(proc, " archery.")),
        "truncated": False,
    }
    assert records["u2"]["truncated"] and records["u2"]["new_tokens"] == 8
    assert records["u2"]["prediction"] == proc.decode(long_answer[:8])
    assert records["d1"]["references"] == ["$ 86.40", "$86.40"]
    assert records["d1"]["score"] == pytest.approx(5 / 6)
    unscored = records["d3"]
    assert (unscored["prediction"], unscored["labeled"]) == ("whatever", False)
    assert unscored["references"] == [] and unscored["score"] is None
    assert records["h1"]["probability"] == pytest.approx(0.9)
    assert (records["h1"]["label"], records["h2"]["label"]) == (1, 0)
    assert records["h4"]["prediction"] == "no" and not records["h4"]["truncated"]
    assert records["h5"]["score"] is None and records["h5"]["label"] is None
    assert records["h5"]["probability"] == pytest.approx(0.3)
    assert "hateful_memes" in format_metrics(metrics) and "0.7500" in format_metrics(metrics)


def test_max_samples_keeps_the_first_samples(layout, proc, tmp_path):
    data = layout([line(f"u{i}", "ucf101", "Archery") for i in range(3)])
    model = ScriptedGenerator([(answer_ids(proc, "Archery"), {})] * 2)
    metrics = run_evaluation(
        model,
        proc,
        list(read_jsonl(data)),
        data.parent / "images",
        batch_size=8,
        max_new_tokens=4,
        out_prefix=tmp_path / "run",
        max_samples=2,
    )
    assert metrics["overall"]["n"] == 2 and metrics["sources"]["ucf101"]["metrics"] == {
        "accuracy": 1.0
    }


# --------------------------------------------------------------------------------------------
# Units: references, scores, answers of the binary task, summaries
# --------------------------------------------------------------------------------------------


def make_sample(source: str, answer: str, meta: dict[str, Any] | None = None) -> Sample:
    return Sample.model_validate(line("x", source, answer, meta))


def test_references_and_per_sample_scores():
    docvqa = make_sample("docvqa", "ITC Limited", {"answers": ["ITC Limited", "ITC Ltd"]})
    assert references_for(docvqa) == ["ITC Limited", "ITC Ltd"]
    assert references_for(make_sample("docvqa", "fallback")) == ["fallback"]
    assert references_for(make_sample("ucf101", "Archery", {"answers": ["x"]})) == ["Archery"]
    assert references_for(make_sample("ucf101", "", {"labeled": False})) == []
    # ANLS is case-insensitive: "itc limited" equals "ITC Limited" -> 1.0
    assert score_sample("docvqa", " itc limited. ", ["ITC Limited"]) == 1.0
    # "ITC Ltd" vs "ITC Limited": distance 4, longest 11 -> NL 4/11 < 0.5 -> 7/11
    assert score_sample("docvqa", "ITC Ltd", ["ITC Limited"]) == pytest.approx(7 / 11)
    # "abc" vs "xyz": NL 1 >= 0.5 -> 0
    assert score_sample("docvqa", "abc", ["xyz"]) == 0.0
    assert score_sample("nlvr2", " False.", ["False"]) == 1.0
    assert score_sample("ucf101", "Archery!", ["Archery"]) == 0.0


def test_hateful_answers_are_read_from_the_data(proc):
    memes = [
        make_sample("hateful_memes", "hateful", {"label": 1}),
        make_sample("hateful_memes", "benign", {"label": 0}),
        make_sample("hateful_memes", "", {"labeled": False}),
    ]
    answers = BinaryAnswers.from_samples(memes, proc)
    assert (answers.positive, answers.negative) == ("hateful", "benign")
    assert answers.positive_token == proc.tokenize("hateful<|end|>")[0]
    # without labeled memes the converter's answers are used
    default = BinaryAnswers.from_samples(memes[2:], proc)
    assert (default.positive, default.negative) == ("yes", "no")
    # a label-less but labeled meme takes its label from its answer text
    assert default.label_of(make_sample("hateful_memes", "Yes.")) == 1
    assert default.label_of(make_sample("hateful_memes", "maybe")) is None
    with pytest.raises(ValueError, match="same token"):
        BinaryAnswers.from_samples(
            [
                make_sample("hateful_memes", "yes it is", {"label": 1}),
                make_sample("hateful_memes", "yes not", {"label": 0}),
            ],
            proc,
        )


def test_auroc_of_one_class_is_reported_as_undefined():
    rows = [
        Prediction("a", "hateful_memes", "q", "no", ["no"], True, 1.0, 2, False, 0.4, 0),
        Prediction("b", "hateful_memes", "q", "no", ["no"], True, 1.0, 2, False, 0.1, 0),
    ]
    entry = summarize(rows)["sources"]["hateful_memes"]
    assert entry["metrics"]["auroc"] is None and entry["metrics"]["accuracy"] == 1.0
    assert "both classes" in entry["note"]
    # two negatives at P 0.4 and 0.1, both below 0.5 -> both right
    assert entry["metrics"]["accuracy_at_0.5"] == 1.0
    assert "auroc" in format_metrics(summarize(rows)) and "n/a" in format_metrics(summarize(rows))


# --------------------------------------------------------------------------------------------
# The real model: greedy generation, stop tokens, max_new_tokens, P(hateful) from its logits
# --------------------------------------------------------------------------------------------


def script_forward(model: torch.nn.Module, script: list[list[list[dict[int, float]]]]) -> list[int]:
    """Make the model's forward emit scripted logits: ``script[batch][row][step]``.

    Each step's dict gives the logits of some tokens; every other token gets -1e9. Returns
    the list of forward calls per batch (a prompt call starts a batch).
    """
    calls: list[int] = []
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        if kwargs["input_ids"].shape[1] > 1:  # the prompt: a new batch
            calls.append(0)
        step = calls[-1]
        calls[-1] += 1
        logits = output.logits[:, -1]
        for row, steps in enumerate(script[len(calls) - 1]):
            wanted = steps[min(step, len(steps) - 1)]
            logits[row] = -1e9
            for token, value in wanted.items():
                logits[row, token] = value
        return output

    model.forward = forward
    return calls


def test_real_generation_stops_at_end_tokens_and_max_new_tokens(layout, proc, tiny_model, tmp_path):
    data = layout(
        [
            line("h1", "hateful_memes", "yes", {"label": 1}),
            line("u1", "ucf101", "Archery", images=("a.jpg", "b.png")),
            line("h2", "hateful_memes", "no", {"label": 0}),
        ],
        images={"wide.png": (90, 40)},
    )
    yes, no, a = (proc.tokenize(t)[0] for t in ("yes", "no", "a"))
    calls = script_forward(
        tiny_model,
        [
            [  # batch 1: "yes" then <|end|>; row 2 never ends
                [{yes: math.log(0.8), no: math.log(0.2)}, {END: 0.0}, {a: 0.0}],
                [{a: 0.0}],
            ],
            [  # batch 2: "no" then <|endoftext|>
                [{yes: math.log(0.3), no: math.log(0.7)}, {ENDOFTEXT: 0.0}, {a: 0.0}],
            ],
        ],
    )
    tiny_model.train()
    tiny_model.model.vision_embed_tokens.eval()
    metrics = run_evaluation(
        tiny_model,
        proc,
        list(read_jsonl(data)),
        data.parent / "images",
        batch_size=2,
        max_new_tokens=5,
        out_prefix=tmp_path / "real",
    )
    # every module is put back in the mode it came in, a frozen tower kept in eval included
    assert tiny_model.training and not tiny_model.model.vision_embed_tokens.training
    # batch 1 runs to max_new_tokens (5 forward calls); batch 2 stops after 2
    assert calls == [5, 2]
    records = json.loads((tmp_path / "real_predictions.json").read_text())
    h1, u1, h2 = records
    assert (h1["prediction"], h1["new_tokens"], h1["truncated"]) == ("yes", 2, False)
    assert h1["probability"] == pytest.approx(0.8)
    assert (u1["prediction"], u1["new_tokens"], u1["truncated"]) == (
        proc.decode([a] * 5),
        5,
        True,
    )
    assert (h2["prediction"], h2["new_tokens"], h2["probability"]) == (
        "no",
        2,
        pytest.approx(0.3),
    )
    # P(yes) 0.8 for the hateful meme, 0.3 for the other: AUROC 1; both answers right
    assert metrics["sources"]["hateful_memes"]["metrics"] == pytest.approx(
        {"auroc": 1.0, "accuracy": 1.0, "accuracy_at_0.5": 1.0}
    )
    assert metrics["sources"]["ucf101"]["metrics"] == {"accuracy": 0.0}


def test_peft_wrapped_model_is_evaluated_like_the_merged_one(
    layout, tiny_dir, tiny_model, tmp_path
):
    from peft import LoraConfig, get_peft_model

    data = layout([line("u1", "ucf101", "Archery"), line("u2", "ucf101", "Archery")])
    samples = list(read_jsonl(data))
    processor = Phi3VProcessor.from_pretrained(tiny_dir, num_crops=2)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "lm_head"])
    config.init_lora_weights = False  # random B: the adapter changes the answers
    wrapped = get_peft_model(tiny_model, config)
    kwargs = {"batch_size": 2, "max_new_tokens": 3}
    run_evaluation(
        wrapped, processor, samples, data.parent / "images", out_prefix=tmp_path / "peft", **kwargs
    )
    merged = wrapped.merge_and_unload()
    run_evaluation(
        merged, processor, samples, data.parent / "images", out_prefix=tmp_path / "merged", **kwargs
    )
    peft_out = json.loads((tmp_path / "peft_predictions.json").read_text())
    merged_out = json.loads((tmp_path / "merged_predictions.json").read_text())
    assert [r["prediction"] for r in peft_out] == [r["prediction"] for r in merged_out]
    assert all(r["new_tokens"] == 3 for r in peft_out)


# --------------------------------------------------------------------------------------------
# torch.distributed: samples split between ranks, gathered in order, rank 0 writes
# --------------------------------------------------------------------------------------------


def test_ranks_share_the_samples_and_only_rank0_writes(layout, proc, tmp_path, monkeypatch):
    """Two ranks simulated in turn: rank r answers samples r, r+2, ...; the gather puts the
    answers back in file order; only rank 0 writes. The DataParallel wrapper must be looked
    through, since a wrapper has no ``generate``."""
    from phi3v_train import evaluate

    data = layout([line(f"u{i}", "ucf101", "Archery") for i in range(3)])
    samples = list(read_jsonl(data))
    parts: dict[int, Any] = {}

    def run_rank(rank: int, answers: list[str]) -> dict[str, Any]:
        def gather(out: list[Any], local: Any) -> None:
            parts[rank] = local
            out[:] = [parts.get(0, {}), parts.get(1, {})]

        monkeypatch.setattr(evaluate, "_distributed", lambda: (rank, 2))
        monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
        monkeypatch.setattr(torch.distributed, "barrier", lambda: None)
        model = torch.nn.DataParallel(
            ScriptedGenerator([(answer_ids(proc, text), {}) for text in answers])
        )
        return run_evaluation(
            model,
            proc,
            samples,
            data.parent / "images",
            batch_size=8,
            max_new_tokens=4,
            out_prefix=tmp_path / f"rank{rank}" / "run",
        )

    run_rank(1, ["Basketball"])  # sample 1 only; a wrong share would empty the script
    metrics = run_rank(0, ["Archery", "Archery"])  # samples 0 and 2
    assert not (tmp_path / "rank1").exists()
    records = json.loads((tmp_path / "rank0" / "run_predictions.json").read_text())
    assert [(r["id"], r["prediction"]) for r in records] == [
        ("u0", "Archery"),
        ("u1", "Basketball"),
        ("u2", "Archery"),
    ]
    # right, wrong, right -> 2/3
    assert metrics["sources"]["ucf101"]["metrics"]["accuracy"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# phi3v-train eval
# --------------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, ["eval", *args])


def one_line_error(result: Any) -> str:
    """The CLI refused with exit status 1 and one error line, no traceback.

    Only library notices (transformers' loading bar and config warnings, on stderr, once a
    model is being loaded) may come before it.
    """
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], result.output
    return lines[-1]


def test_eval_cli_writes_both_files_and_prints_the_table(layout, tiny_dir, tmp_path):
    data = layout(
        [
            line("d1", "docvqa", "30421", {"answers": ["30421"]}),
            line("h1", "hateful_memes", "yes", {"label": 1}),
        ]
    )
    out = tmp_path / "results"
    result = invoke(
        "--model", str(tiny_dir), "--data", str(data), "--num_crops", "1",
        "--max_new_tokens", "2", "--output_dir", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "docvqa" in result.output and "anls" in result.output and "auroc" in result.output
    metrics = json.loads((out / "data_train_metrics.json").read_text())
    assert metrics["settings"]["num_crops"] == 1 and metrics["overall"]["n"] == 2
    predictions = json.loads((out / "data_train_predictions.json").read_text())
    assert [p["id"] for p in predictions] == ["d1", "h1"]
    assert all(p["new_tokens"] <= 2 for p in predictions)
    assert f"wrote {out / 'data_train_metrics.json'}" in result.output


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, t, tmp: ["--model", t, "--data", str(tmp / "nope.jsonl")], "no such file"),
        (
            lambda d, t, tmp: ["--model", str(tmp / "no-model"), "--data", d],
            "cannot load the model",
        ),
        (
            lambda d, t, tmp: ["--model", t, "--data", d, "--adapter", str(tmp)],
            "not a PEFT adapter directory",
        ),
    ],
    ids=["missing-data", "missing-model", "not-an-adapter"],
)
def test_eval_cli_refuses_bad_input_in_one_line(
    layout, tiny_dir, tmp_path, make_args: Callable[..., list[str]], message: str
):
    data = layout([line("u1", "ucf101", "Archery")])
    result = invoke(*make_args(str(data), str(tiny_dir), tmp_path))
    assert message in one_line_error(result)


def test_eval_cli_reports_an_unreadable_image_in_one_line(layout, tiny_dir, tmp_path):
    data = layout([line("u1", "ucf101", "Archery")])
    (data.parent / "images" / "a.jpg").write_bytes(b"not a jpeg")  # exists: validate passes
    error = one_line_error(
        invoke("--model", str(tiny_dir), "--data", str(data), "--output_dir", str(tmp_path / "o"))
    )
    assert "sample 'u1': cannot read image a.jpg" in error


def test_eval_cli_refuses_data_that_validate_rejects(layout, tiny_dir):
    data = layout(
        [
            line("u1", "ucf101", "Archery", images=("missing.jpg",)),
            line("u1", "ucf101", "Archery"),
        ]
    )
    error = one_line_error(invoke("--model", str(tiny_dir), "--data", str(data)))
    assert "invalid data" in error and "image file not found" in error and "+1 more" in error
