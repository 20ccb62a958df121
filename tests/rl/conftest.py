"""RL-layer tests: their helper actors are importable in children, and no service outlives
its test."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def shut_down_leftover_services():
    yield
    from forge_core.service._controller import shutdown_all

    shutdown_all()


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny random Llama, Qwen2 and Qwen3 directories, built here (see hf_models)."""
    pytest.importorskip("transformers")
    from forge_rl.config import GRPOConfig, data_path

    from hf_models import ARCHITECTURES, build_model, corpus_of

    root = tmp_path_factory.mktemp("hf-models")
    corpus = corpus_of(data_path(GRPOConfig(model="", steps=1)))
    return {arch: build_model(arch, str(root / arch), corpus) for arch in ARCHITECTURES}
