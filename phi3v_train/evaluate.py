"""Evaluation: greedy answers for a data file, scored by the metric of each sample's source.

What the Phi-3 Cookbook scripts do at ``eval_before`` / ``eval_after``, with their gaps fixed:

* generation: left-padded batches, greedy, at most ``max_new_tokens`` (64, the Cookbook's)
  new tokens, stopping at ``<|end|>`` or ``<|endoftext|>``; only the new tokens are decoded,
  special tokens skipped;
* ``docvqa``: ANLS against every ground truth in ``meta.answers`` (the assistant answer when
  there are none), case-insensitive like the official scorer, threshold 0.5;
* ``hateful_memes``: AUROC, the dataset's official metric, from P(hateful) — the model's
  probability of the hateful answer's first token against the other answer's first token at
  the answer position — plus the Cookbook's exact-match accuracy;
* every other source (``ucf101``, ``nlvr2``, ...): exact-match accuracy after the Cookbook's
  ``strip().strip('.').lower()``.

Samples marked ``meta.labeled: false`` are predicted but never scored. Two files come out,
each written atomically: ``<prefix>_predictions.json`` (one record per sample) and
``<prefix>_metrics.json``. Under ``torchrun`` the samples are split between the ranks and
gathered, and rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from phi3v_data.converters.hateful_memes import ANSWERS as HATEFUL_MEMES_ANSWERS
from phi3v_data.jsonl import atomic_writer
from phi3v_data.layout import ImageResolver
from phi3v_data.prompt import turn_response
from phi3v_data.schema import Sample
from phi3v_train.metrics import accuracy_at, anls, auroc, exact_match_accuracy, normalize_answer
from phi3v_train.processing import ChatTurn, Phi3VProcessor

DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_BATCH_SIZE = 8
ANLS_SOURCES = frozenset({"docvqa"})
AUROC_SOURCES = frozenset({"hateful_memes"})


def metric_for(source: str) -> str:
    """The headline metric of a source: ``anls``, ``auroc`` or ``accuracy``."""
    if source in ANLS_SOURCES:
        return "anls"
    if source in AUROC_SOURCES:
        return "auroc"
    return "accuracy"


def is_labeled(sample: Sample) -> bool:
    """False only for samples the converter marked ``meta.labeled: false`` (test splits)."""
    return (sample.meta or {}).get("labeled") is not False


def references_for(sample: Sample) -> list[str]:
    """Ground truths of a sample: all of ``meta.answers`` for ANLS sources, else the answer."""
    if not is_labeled(sample):
        return []
    answers = (sample.meta or {}).get("answers")
    if (
        sample.source in ANLS_SOURCES
        and isinstance(answers, list)
        and answers
        and all(isinstance(answer, str) for answer in answers)
    ):
        return list(answers)
    return [sample.conversations[-1].assistant]


@dataclass(frozen=True)
class BinaryAnswers:
    """The answer texts of the two Hateful Memes classes and their first answer tokens."""

    positive: str
    negative: str
    positive_token: int
    negative_token: int

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], processor: Phi3VProcessor) -> BinaryAnswers:
        """Read the hateful / not-hateful answers from the data, as the model was trained.

        The most common assistant text among label-1 samples is the hateful answer, likewise
        for label 0; a class absent from the data (an unlabeled test split) falls back to the
        converter's ``"yes"`` / ``"no"``. The first token is the first label token training
        saw, i.e. of ``answer + "<|end|>\\n<|endoftext|>"`` tokenized after the prompt.
        """
        seen: dict[int, Counter[str]] = {0: Counter(), 1: Counter()}
        for sample in samples:
            label = _binary_label(sample)
            if sample.source in AUROC_SOURCES and is_labeled(sample) and label is not None:
                seen[label][sample.conversations[-1].assistant] += 1
        texts = {
            label: counts.most_common(1)[0][0] if counts else HATEFUL_MEMES_ANSWERS[label]
            for label, counts in seen.items()
        }
        positive, negative = texts[1], texts[0]
        tokens = [processor.tokenize(turn_response(text))[0] for text in (positive, negative)]
        if tokens[0] == tokens[1]:
            raise ValueError(
                f"the hateful answer {positive!r} and the other answer {negative!r} start with "
                "the same token, so their first-token probabilities cannot tell them apart"
            )
        return cls(positive, negative, tokens[0], tokens[1])

    def label_of(self, sample: Sample) -> int | None:
        """``meta.label`` when it is 0/1, else which class answer the assistant text is."""
        label = _binary_label(sample)
        if label is not None:
            return label
        answer = normalize_answer(sample.conversations[-1].assistant)
        if answer == normalize_answer(self.positive):
            return 1
        return 0 if answer == normalize_answer(self.negative) else None


def _binary_label(sample: Sample) -> int | None:
    label = (sample.meta or {}).get("label")
    return int(label) if isinstance(label, (int, bool)) and label in (0, 1) else None


@dataclass
class Prediction:
    """One sample's output and score; a record of the predictions JSON."""

    id: str
    source: str
    prompt: str
    prediction: str
    references: list[str]
    labeled: bool
    score: float | None
    new_tokens: int
    truncated: bool
    probability: float | None = None
    label: int | None = None

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        if self.source not in AUROC_SOURCES:  # probability and label mean nothing elsewhere
            del record["probability"], record["label"]
        return record


def score_sample(source: str, prediction: str, references: Sequence[str]) -> float:
    """Per-sample score: ANLS for ANLS sources, else exact match (1.0 or 0.0).

    The prediction loses outer spaces and dots before ANLS, as the Cookbook strips it; exact
    match normalises both sides the Cookbook way.
    """
    if source in ANLS_SOURCES:
        return anls(prediction.strip().strip("."), references)
    return exact_match_accuracy([prediction], references[:1])


def summarize(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """The metrics document: per source its metric(s) and counts, and an overall line.

    ``overall.mean_score`` is the mean per-sample score (exact match or ANLS) over every
    scored sample; for a file of one source it equals that source's accuracy or ANLS.
    """
    sources: dict[str, Any] = {}
    for source in sorted({p.source for p in predictions}):
        rows = [p for p in predictions if p.source == source]
        scored = [p for p in rows if p.labeled]
        entry: dict[str, Any] = {
            "metric": metric_for(source),
            "n": len(rows),
            "scored": len(scored),
            "unlabeled": len(rows) - len(scored),
        }
        scores = [p.score for p in scored if p.score is not None]
        mean = sum(scores) / len(scores) if scores else None
        if source in AUROC_SOURCES:
            entry["metrics"], note = _binary_metrics(scored, mean)
            if note:
                entry["note"] = note
        else:
            entry["metrics"] = {metric_for(source): mean}
        sources[source] = entry
    all_scores = [p.score for p in predictions if p.labeled and p.score is not None]
    overall = {
        "n": len(predictions),
        "scored": len(all_scores),
        "unlabeled": sum(not p.labeled for p in predictions),
        "truncated": sum(p.truncated for p in predictions),
        "mean_score": sum(all_scores) / len(all_scores) if all_scores else None,
    }
    return {"sources": sources, "overall": overall}


def _binary_metrics(
    scored: Sequence[Prediction], accuracy: float | None
) -> tuple[dict[str, float | None], str | None]:
    """AUROC and accuracy at P >= 0.5 from the probabilities, plus exact-match accuracy."""
    pairs = [(p.label, p.probability) for p in scored if p.label is not None]
    pairs = [(label, prob) for label, prob in pairs if prob is not None]
    metrics: dict[str, float | None] = {
        "auroc": None,
        "accuracy": accuracy,
        "accuracy_at_0.5": None,
    }
    note = None
    if len(pairs) < len(scored):
        note = f"{len(scored) - len(pairs)} labeled sample(s) have no 0/1 label; not in AUROC"
    if pairs:
        labels, probabilities = zip(*pairs, strict=True)
        metrics["accuracy_at_0.5"] = accuracy_at(labels, probabilities, 0.5)
        try:
            metrics["auroc"] = auroc(labels, probabilities)
        except ValueError as error:  # one class only: AUROC is undefined, say why
            note = f"auroc undefined: {error}"
    return metrics, note


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _chat_turns(sample: Sample, images: ImageResolver) -> list[ChatTurn]:
    """The sample's turns with their images opened (paths checked to stay inside the root)."""
    turns = []
    for turn in sample.conversations:
        opened = []
        for relative in turn.images:
            problem = images.problem(relative)
            if problem is not None:
                raise FileNotFoundError(f"sample {sample.id!r}: {problem}")
            try:
                with Image.open(images.full_path(relative)) as image:
                    image.load()
            except OSError as error:  # PIL's UnidentifiedImageError, truncated files
                raise OSError(
                    f"sample {sample.id!r}: cannot read image {relative}: {error}"
                ) from None
            opened.append(image)
        turns.append(ChatTurn(user=turn.user, assistant=turn.assistant, images=opened))
    return turns


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module that can ``generate``: DDP and DeepSpeed wrappers hold it as ``.module``."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module,
    processor: Phi3VProcessor,
    samples: Sequence[Sample],
    images: ImageResolver,
    *,
    max_new_tokens: int,
    binary: BinaryAnswers | None = None,
) -> list[tuple[list[int], bool, float | None]]:
    """Greedy answers of one left-padded batch: (answer ids, stopped, P(hateful)) per sample.

    The answer ids end before the first stop token. P(hateful) is computed only for AUROC
    sources, from the raw logits of the first generated position: that position is exactly
    where training put the first answer token, so no extra forward pass is needed.
    """
    examples = [
        processor.generation_inputs(_chat_turns(sample, images), sample.id) for sample in samples
    ]
    inputs = processor.collate(examples, padding_side="left")
    device = _model_device(model)
    inputs = {key: value.to(device) for key, value in inputs.items()}
    want_probability = binary is not None and any(s.source in AUROC_SOURCES for s in samples)
    output = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=processor.stop_token_ids,
        pad_token_id=processor.pad_token_id,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=want_probability,
    )
    new_tokens = output.sequences[:, inputs["input_ids"].shape[1] :].tolist()
    probabilities: list[float | None] = [None] * len(samples)
    if want_probability:
        assert binary is not None
        first = output.logits[0].double()[:, [binary.positive_token, binary.negative_token]]
        positive = torch.softmax(first, dim=-1)[:, 0].tolist()
        probabilities = [
            p if s.source in AUROC_SOURCES else None for p, s in zip(positive, samples, strict=True)
        ]
    stops = set(processor.stop_token_ids)
    results = []
    for row, probability in zip(new_tokens, probabilities, strict=True):
        end = next((i for i, token in enumerate(row) if token in stops), None)
        answer = row if end is None else row[:end]
        results.append((answer, end is not None, probability))
    return results


def _distributed() -> tuple[int, int]:
    """(rank, world size) under an initialized ``torch.distributed``, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def predict(
    model: torch.nn.Module,
    processor: Phi3VProcessor,
    samples: Sequence[Sample],
    images_root: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool | None = None,
) -> list[Prediction]:
    """Generate and score every sample (this rank's share under ``torch.distributed``)."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    binary = (
        BinaryAnswers.from_samples(samples, processor)
        if any(s.source in AUROC_SOURCES for s in samples)
        else None
    )
    rank, world = _distributed()
    indices = list(range(rank, len(samples), world))
    images = ImageResolver(images_root)
    generator = _unwrap(model)
    modes = {module: module.training for module in generator.modules()}
    generator.eval()
    found: dict[int, Prediction] = {}
    batches = range(0, len(indices), batch_size)
    bar = tqdm(
        total=len(indices),
        desc="evaluating",
        unit="sample",
        disable=(not progress) if progress is not None else None,
    )
    try:
        for start in batches:
            chunk = indices[start : start + batch_size]
            batch = [samples[i] for i in chunk]
            results = generate_batch(
                generator, processor, batch, images, max_new_tokens=max_new_tokens, binary=binary
            )
            for index, sample, (answer, stopped, probability) in zip(
                chunk, batch, results, strict=True
            ):
                found[index] = _prediction(
                    sample,
                    processor.decode(answer),
                    len(answer) + stopped,
                    not stopped,
                    probability,
                    binary,
                )
            bar.update(len(chunk))
    finally:
        bar.close()
        for module, training in modes.items():  # as it came, frozen towers in eval included
            module.train(training)
    if world > 1:
        gathered: list[dict[int, Prediction] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, found)
        found = {index: p for part in gathered if part for index, p in part.items()}
    return [found[index] for index in sorted(found)]


def _prediction(
    sample: Sample,
    text: str,
    new_tokens: int,
    truncated: bool,
    probability: float | None,
    binary: BinaryAnswers | None,
) -> Prediction:
    references = references_for(sample)
    labeled = is_labeled(sample)
    score = score_sample(sample.source, text, references) if labeled else None
    label = binary.label_of(sample) if binary and sample.source in AUROC_SOURCES else None
    return Prediction(
        id=sample.id,
        source=sample.source,
        prompt=sample.conversations[-1].user,
        prediction=text,
        references=references,
        labeled=labeled,
        score=score,
        new_tokens=new_tokens,
        truncated=truncated,
        probability=probability,
        label=label if labeled else None,
    )


# --------------------------------------------------------------------------------------------
# The entry point the trainer and the CLI call
# --------------------------------------------------------------------------------------------


def output_paths(out_prefix: Path) -> tuple[Path, Path]:
    """``<prefix>_predictions.json`` and ``<prefix>_metrics.json``."""
    prefix = Path(out_prefix)
    return (
        prefix.with_name(f"{prefix.name}_predictions.json"),
        prefix.with_name(f"{prefix.name}_metrics.json"),
    )


def write_json(path: Path, document: Any) -> None:
    """Write ``document`` as indented JSON, atomically (temporary file, then rename)."""
    with atomic_writer(path) as file:
        file.write(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False).encode())
        file.write(b"\n")


def run_evaluation(
    model: torch.nn.Module,
    processor: Phi3VProcessor,
    samples: list[Sample],
    images_root: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    out_prefix: Path,
    max_samples: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Predict, score and write both JSON files; return the metrics document.

    ``model`` may be a plain, PEFT-wrapped, DDP- or DeepSpeed-wrapped model; it is put in
    eval mode for the run and back in its previous mode afterwards. ``max_samples`` keeps the
    first N samples. Every rank returns the same metrics; rank 0 writes the files.
    """
    if max_samples is not None:
        samples = samples[:max_samples]
    if not samples:
        raise ValueError("no samples to evaluate")
    predictions = predict(
        model,
        processor,
        samples,
        Path(images_root),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    metrics = summarize(predictions)
    metrics["settings"] = {
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "num_crops": processor.num_crops,
        "max_samples": max_samples,
    }
    rank, world = _distributed()
    if rank == 0:
        predictions_path, metrics_path = output_paths(out_prefix)
        write_json(predictions_path, [p.to_json() for p in predictions])
        write_json(metrics_path, metrics)
    if world > 1:
        torch.distributed.barrier()  # the files exist on return, on every rank
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table of a metrics document: one line per source and metric."""
    rows = [("SOURCE", "SAMPLES", "SCORED", "METRIC", "VALUE")]
    for source, entry in metrics["sources"].items():
        for k, (name, value) in enumerate(entry["metrics"].items()):
            first = k == 0
            rows.append(
                (
                    source if first else "",
                    str(entry["n"]) if first else "",
                    str(entry["scored"]) if first else "",
                    name,
                    _number(value),
                )
            )
    overall = metrics["overall"]
    rows.append(
        (
            "overall",
            str(overall["n"]),
            str(overall["scored"]),
            "mean score",
            _number(overall["mean_score"]),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    notes = [
        f"{source}: {entry['note']}"
        for source, entry in metrics["sources"].items()
        if entry.get("note")
    ]
    if overall["truncated"]:
        notes.append(f"{overall['truncated']} answer(s) reached max_new_tokens without <|end|>")
    return "\n".join(lines + notes)


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def load_for_evaluation(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    num_crops: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, Phi3VProcessor]:
    """Load a model (plus a LoRA adapter) and its processor for :func:`run_evaluation`.

    Defaults: the GPU when there is one, in bfloat16 where supported (float16 otherwise),
    float32 on CPU. The processor comes from the adapter directory when training saved it
    there (it carries the training ``num_crops``), else from the model; ``num_crops``
    overrides both.
    """
    from phi3v_train.merge import apply_adapter, check_adapter_dir
    from phi3v_train.modeling import Phi3VForCausalLM

    adapter = check_adapter_dir(adapter_dir) if adapter_dir is not None else None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    processor_dir = adapter if adapter and (adapter / "tokenizer.json").is_file() else model_dir
    processor = Phi3VProcessor.from_pretrained(processor_dir, num_crops=num_crops)
    model = Phi3VForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if adapter is not None:
        model = apply_adapter(model, adapter)
    return model.to(device).eval(), processor


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "BinaryAnswers",
    "Prediction",
    "format_metrics",
    "generate_batch",
    "load_for_evaluation",
    "metric_for",
    "output_paths",
    "predict",
    "references_for",
    "run_evaluation",
    "score_sample",
    "summarize",
]
