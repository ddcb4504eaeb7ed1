"""Connecting to Milvus: the pymilvus import, the index types each engine builds, one retried connect."""

from __future__ import annotations

import threading
from pathlib import Path

from millrace.config import ConfigError, Settings
from millrace.index.lite_lock import start_lite
from millrace.retry import is_transient, with_retries

LITE_INDEXES = {"FLAT", "IVF_FLAT", "AUTOINDEX"}  # milvus-lite 2.5 rejects or cannot build the rest
GPU_INDEXES = {"GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE"}
SERVER_INDEXES = {"FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "SCANN", "DISKANN", "AUTOINDEX"} | GPU_INDEXES

_BUILD = {"HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}, "IVF_SQ8": {"nlist": 128},
          "IVF_PQ": {"nlist": 128, "m": 16}, "SCANN": {"nlist": 128}, "GPU_IVF_FLAT": {"nlist": 128},
          "GPU_IVF_PQ": {"nlist": 128, "m": 16}, "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32}}
_SEARCH = {"HNSW": {"ef": 64}, "IVF_FLAT": {"nprobe": 16}, "IVF_SQ8": {"nprobe": 16}, "IVF_PQ": {"nprobe": 16},
           "SCANN": {"nprobe": 16}, "GPU_IVF_FLAT": {"nprobe": 16}, "GPU_IVF_PQ": {"nprobe": 16},
           "GPU_CAGRA": {"itopk_size": 64}}
IVF_INDEXES = {"IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN", "GPU_IVF_FLAT", "GPU_IVF_PQ"}
# 1 / the share of an IVF index's lists a search visits (see nprobe_for).
NPROBE_SHARE = 32


def build_params(index_type: str, nlist: int = 0) -> dict:
    """An index's build parameters; `nlist` (lists of an IVF index) when given, else 128."""
    params = dict(_BUILD.get(index_type, {}))
    if nlist and index_type in IVF_INDEXES:
        params["nlist"] = nlist
    return params


def nlist_for(rows: int) -> int:
    """IVF lists for a collection of `rows` vectors: Milvus' rule of thumb 4 x sqrt(rows), within [64, 16384]."""
    return int(min(16384, max(64, round(4 * rows ** 0.5))))


def nprobe_for(nlist: int) -> int:
    """IVF lists searched per query: a fixed share of them, so recall does not fall as the index grows (nprobe 16
    of 4,000 lists searches 0.4 % of a million vectors). bench/lite_index.py measures recall@10 against FLAT."""
    return int(min(nlist, max(16, -(-nlist // NPROBE_SHARE))))


def search_params(index: dict) -> dict:
    """Search parameters for an index as describe_index reports it (its type and, for IVF, its nlist)."""
    kind = str(index.get("index_type", "")).upper()
    params = dict(_SEARCH.get(kind, {}))
    if kind in IVF_INDEXES and index.get("nlist"):
        params["nprobe"] = nprobe_for(int(index["nlist"]))
    return params

# pymilvus 3.0.2 retries inside every call (decorators.retry_on_rpc_failure on each GrpcHandler method): any gRPC
# error but DEADLINE_EXCEEDED, PERMISSION_DENIED, UNAUTHENTICATED, INVALID_ARGUMENT, ALREADY_EXISTS,
# RESOURCE_EXHAUSTED and UNIMPLEMENTED, plus rate-limit errors, up to 75 times with back-off growing to 3 s (minutes
# on a dead server), or for `timeout` seconds when a call passes one. retry_times=0 makes its first failure final,
# so with_retries is the one layer; no per-call timeout either, since a timeout switches it to retry until then.
NO_CLIENT_RETRY = {"retry_times": 0}



def choose_index(settings: Settings) -> str:
    wanted = (settings.milvus_index or ("FLAT" if settings.milvus_is_lite else "HNSW")).upper()
    if settings.milvus_is_lite:
        if wanted not in LITE_INDEXES:
            hint = " (GPU indexes need a GPU Milvus server)" if wanted in GPU_INDEXES else ""
            raise ConfigError(f"index type {wanted} cannot be built by Milvus Lite{hint}; "
                              f"use one of {sorted(LITE_INDEXES)} or point MILLRACE_MILVUS_URI at a server")
    elif wanted not in SERVER_INDEXES:
        raise ConfigError(f"unknown Milvus index type {wanted}; known: {sorted(SERVER_INDEXES)}")
    return wanted


_import_lock = threading.Lock()
_imported: list = []


def pymilvus():
    """Import pymilvus without letting it reconfigure logging.

    On import it calls logging.config.dictConfig, which shuts down every handler already installed: inside a
    Prefect flow that blocks ~5 s flushing the API log handler and leaves Prefect's handlers closed."""
    import logging.config

    # Under the lock: a second task thread must not pick up the half-initialised module from sys.modules.
    with _import_lock:
        if not _imported:
            real = logging.config.dictConfig
            logging.config.dictConfig = lambda config: None
            try:
                import pymilvus as module
            finally:
                logging.config.dictConfig = real
            # CRITICAL: with its own retries off, pymilvus logs every failed call with a traceback at ERROR, and
            # with_retries already logs each attempt in one line (and every query_iterator on Lite warns).
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
            _imported.append(module)
        return _imported[0]


# pymilvus pings every 10 s even with no call in flight; the Lite server's gRPC default allows one ping per 5 min
# without data, so a connection idle through a long embedding batch got GOAWAY "too_many_pings" and the next write
# failed once (UNAVAILABLE) into a retry. Ping only while a call is in flight.
LITE_GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": 0, "grpc.keepalive_time_ms": 60_000}
# How long to wait for the Lite server this process just started to listen (start_lite) and answer. A cold start (its
# ~200 MB binary read from disk, the data file opened) on a loaded 2-core machine took over pymilvus' 10 s
# (2026-12-04), and the server is known to be running, so waiting costs nothing.
LITE_CONNECT_TIMEOUT_S = 60.0


def connect(settings: Settings):
    """A MilvusClient, retried with backoff; a dead server or a locked Lite file ends in a ConfigError."""
    MilvusClient = pymilvus().MilvusClient
    from pymilvus.exceptions import MilvusException

    uri = settings.resolved_milvus_uri
    if settings.milvus_is_lite:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        # our lock first (LiteHeld names the holder), then milvus-lite's server, listening; never retried
        start_lite(uri, LITE_CONNECT_TIMEOUT_S)
        try:
            return MilvusClient(uri=uri, grpc_options=LITE_GRPC_OPTIONS, timeout=LITE_CONNECT_TIMEOUT_S)
        except MilvusException as exc:
            raise ConfigError(f"cannot open Milvus Lite data {uri}: {exc.message}") from exc

    def attempt():
        return MilvusClient(uri=uri, token=settings.milvus_token.get_secret_value(),
                            db_name=settings.milvus_db, timeout=5)

    try:
        return with_retries(attempt, settings.retry_delays, what=f"connect to Milvus at {uri}")
    except Exception as exc:
        tries = f"after {len(settings.retry_delays) + 1} tries " if is_transient(exc) else ""
        raise ConfigError(f"cannot reach Milvus at {uri} {tries}({exc}). Check that the server is up (`make server` "
                          "runs one locally) and MILLRACE_MILVUS_URI / MILLRACE_MILVUS_TOKEN are right") from exc
