"""CPU encoder backends behind the one embedder interface: the model exported once to ONNX and run by ONNX Runtime
(fp32, or with int8 weights by dynamic quantisation) or by OpenVINO, with sentence-transformers' tokenisation,
pooling and normalisation. torch (sentence-transformers itself) stays in millrace.documents.embed.

The export is made from the local model folder (never a hub), on first use, and cached under
MILLRACE_HOME/models/<digest of the model's files>/: written to a temporary name and renamed, under a file lock,
because every Dask worker of a first run asks for it at once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from millrace.config import ConfigError

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx", "openvino": "openvino/model.xml"}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
# Backends whose vector for a text depends on the texts encoded with it: dynamic int8 scales activations per batch
# (~0.99 cosine between a text alone and in a padded batch).
BATCH_DEPENDENT = frozenset({"onnx-int8"})


@dataclass(frozen=True)
class Recipe:
    """What sentence-transformers does around the transformer, read from the model folder."""

    pooling: str  # mean | cls
    normalize: bool
    max_length: int
    lowercase: bool


def recipe(model_dir: Path) -> Recipe:
    """The folder's modules, refused where an exported backend would compute something else (a Dense layer...)."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if odd := [k for k in kinds if k not in _SUPPORTED_MODULES]:
        raise ConfigError(f"the model has modules {odd} that the onnx/openvino backends do not reproduce; use "
                          "MILLRACE_EMBED_BACKEND=torch")
    pooling = next((m for m in modules if m["type"].endswith("Pooling")), None)
    config = json.loads((model_dir / pooling["path"] / "config.json").read_text()) if pooling else {}
    if config.get("pooling_mode_mean_tokens", not config):
        mode = "mean"
    elif config.get("pooling_mode_cls_token"):
        mode = "cls"
    else:
        raise ConfigError(f"the model pools with {config}; the onnx/openvino backends do mean or CLS pooling only: "
                          "use MILLRACE_EMBED_BACKEND=torch")
    st = model_dir / "sentence_bert_config.json"
    st_config = json.loads(st.read_text()) if st.exists() else {}
    return Recipe(mode, "Normalize" in kinds, int(st_config.get("max_seq_length") or 512),
                  bool(st_config.get("do_lower_case")))


def exported(model_dir: Path, cache_dir: Path, backend: str) -> Path:
    """The backend's model file under `cache_dir`, exported first if it is not there yet."""
    target = cache_dir / _FILES[backend]
    if target.exists():
        return target
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / ".export.lock")), _quiet_export():
        if target.exists():  # another process exported it while we waited
            return target
        fp32 = cache_dir / _FILES["onnx"]
        if not fp32.exists():
            _export_onnx(model_dir, fp32)
        if backend == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = target.with_suffix(".tmp.onnx")
            # Per-channel scales: per-tensor ones moved vectors to a cosine of 0.936 mean / 0.898 min against torch on
            # SciFact abstracts, per-channel 0.995 / 0.975 (measured here). MatMuls only: the embeddings stay fp32.
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"])
            os.replace(tmp, target)
        elif backend == "openvino":
            import openvino as ov

            tmp = target.parent.with_name("openvino.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            ov.save_model(ov.convert_model(str(fp32)), str(tmp / target.name), compress_to_fp16=False)
            os.replace(tmp, target.parent)
    return target


@contextlib.contextmanager
def _quiet_export():
    """The tracer's and the quantiser's advice (TracerWarning, "consider pre-processing") is for whoever writes an
    exporter, not for someone starting `make demo`: kept off the terminal while the export runs."""
    root = logging.getLogger()
    muted = logging.Filter("millrace")  # passes only records of loggers named millrace*: the quantiser's are not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.addFilter(muted)
        try:
            yield
        finally:
            root.removeFilter(muted)


def _export_onnx(model_dir: Path, out: Path) -> None:
    import inspect

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    class ByName(torch.nn.Module):
        """The inputs by name, the last hidden state alone out: positional order differs across transformers."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(names, tensors)), use_cache=False).last_hidden_state

    # A padded row in the example: traced with an all-ones mask, transformers may skip the mask altogether.
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    dummy = tuple(mask if n == "attention_mask" else torch.ones((2, 8), dtype=torch.long) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(ByName().eval(), dummy, str(tmp), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    os.replace(tmp, out)


class ExportedEncoder:
    """sentence-transformers' encode() for an exported model: the subset of its interface millrace.documents.embed uses."""

    device = "cpu"

    def __init__(self, model_dir: Path, path: Path, backend: str, threads: int):
        from tokenizers import Tokenizer

        self.recipe, self.backend, self.threads = recipe(model_dir), backend, threads
        self.batch_dependent = backend in BATCH_DEPENDENT
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.recipe.max_length)
        pad = _pad_token(model_dir)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad) or 0, pad_token=pad)
        self._run = _openvino(path, threads) if backend == "openvino" else _onnxruntime(path, threads)
        self.dim = int(self.encode(["dimension probe"], batch_size=1).shape[1])

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: list[str], batch_size: int = 32, **_: object) -> np.ndarray:
        """Unit-norm (if the model normalises) float32 vectors. Longest texts first, as sentence-transformers
        batches them, so that a batch pads to similar lengths."""
        prepared = [str(t).strip().lower() if self.recipe.lowercase else str(t).strip() for t in texts]
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i]))
        out: np.ndarray | None = None
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start:start + batch_size]
            encodings = self.tokenizer.encode_batch([prepared[i] for i in idx])
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64), "attention_mask": mask,
                     "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
            hidden = self._run(feeds)
            if self.recipe.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask[..., None].astype(np.float32)
                pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            if self.recipe.normalize:
                pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        return out if out is not None else np.empty((0, getattr(self, "dim", 0)), dtype=np.float32)


def _pad_token(model_dir: Path) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.exists():
            token = json.loads(path.read_text()).get("pad_token")
            if isinstance(token, dict):
                token = token.get("content")
            if token:
                return str(token)
    return "[PAD]"


def _onnxruntime(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return lambda feeds: session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in wanted})[0]


def _openvino(path: Path, threads: int):
    import openvino as ov

    # f32: the same numbers as the ONNX export (the CPU plugin would otherwise pick bf16 where the CPU has it).
    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    wanted = {i.get_any_name() for i in compiled.inputs}
    request, output = compiled.create_infer_request(), compiled.output("last_hidden_state")
    return lambda feeds: request.infer({k: v for k, v in feeds.items() if k in wanted})[output].copy()
