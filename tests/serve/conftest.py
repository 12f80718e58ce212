"""A tiny random model directory shared by the serving and plotting tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqformer.translator import Translator

from .serve_helpers import make_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("serve-model") / "tiny-en-fr")


@pytest.fixture(scope="session")
def translator(tiny_model_dir: Path) -> Translator:
    return Translator.load(tiny_model_dir)
