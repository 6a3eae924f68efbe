"""Shared fixtures: the tiny checkpoint in the official layout, loaded like the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-phi3v"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def processor():
    from phi3v_train.processing import Phi3VProcessor

    return Phi3VProcessor.from_pretrained(TINY)


@pytest.fixture()
def tiny_model():
    from phi3v_train.modeling import Phi3VForCausalLM

    torch.manual_seed(0)
    return Phi3VForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
