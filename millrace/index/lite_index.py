"""Milvus Lite's vector index by collection size: FLAT while a scan is fast, then IVF_FLAT, swapped in without a gap.

Milvus Lite 2.5 scans a FLAT index, ~0.2 ms per 1,000 vectors on two cores: a laptop collection of a million chunks
answers in a quarter of a second (BENCHMARKS.md "Query latency"). It also builds IVF_FLAT. With
`Settings.lite_ivf_rows` set, a collection left on the default index (`MILLRACE_MILVUS_INDEX` unset) that has grown
past that many chunks is copied into the next physical collection (millrace.index.versions), indexed IVF_FLAT with as many
lists as its size asks for, checked row for row against the ledger, and swapped in. Searches go on against the FLAT
collection until the swap, which is one ledger write on Lite; it stays, as `previous`, for the rollback grace
period. The copy moves the stored rows, vectors included: nothing is re-embedded. A server is left alone: it indexes
with HNSW from the start.

It is off by default: milvus-lite 2.5.1 builds and searches its IVF_FLAT with parameters of its own, whatever nlist
and nprobe say (recall@10 and latency identical for nprobe 1 to 317, nlist 32 to 1,265, and AUTOINDEX), and that
index found 0.817 of the exact top 10 at 100,000 vectors (bench/lite_index.py). An operator who prefers a 12 x
faster search to that recall turns it on; one who needs both runs a Milvus server.

The caller holds the logical name's lease (an ingest or a drain, at the end of its run), so nothing is written to
either collection while they are copied."""

from __future__ import annotations

import time
from typing import Any, Callable

from sqlalchemy import select

from millrace.config import Settings
from millrace.index import versions
from millrace.index.connect import nlist_for
from millrace.index.schema import SPARSE_FIELD
from millrace.index.store import shared_store
from millrace.ledger.book import documents, runs, shared_ledger

IVF = "IVF_FLAT"
# Rows per insert into the copy: Lite 2.5.1 took 19 s for one insert of 5,000 384-d rows and 0.09 s for 1,000.
COPY_PAGE = 1000


class ReindexError(RuntimeError):
    """The copy does not hold what the collection it copies holds: it is not swapped in."""


def due(settings: Settings) -> int:
    """The active collection's chunk count when it is due to move to IVF_FLAT now, else 0."""
    if not settings.milvus_is_lite or settings.milvus_index or settings.lite_ivf_rows <= 0:
        return 0
    physical = versions.active_physical(settings)
    if versions.physical_settings(settings, physical).milvus_index:  # chosen already (by this or a rebuild)
        return 0
    store = shared_store(settings, physical)
    if not store.exists() or str(store.vector_index().get("index_type", "")).upper() != "FLAT":
        return 0
    rows = store.count()
    return rows if rows >= settings.lite_ivf_rows else 0


def reindex(settings: Settings, rows: int, grace_s: float = versions.DEFAULT_GRACE_S,
            log: Callable[..., None] | None = None) -> dict[str, Any]:
    """Copy the active collection into a new one indexed IVF_FLAT for `rows` vectors and swap it in; the summary."""
    started, old = time.perf_counter(), versions.active_physical(settings)
    nlist = nlist_for(rows)
    new = versions.new_version(settings, {"milvus_index": IVF, "milvus_nlist": nlist}, grace_s)
    if log:
        log("%s holds %d chunks: copying it into %s, indexed %s with nlist %d", old, rows, new, IVF, nlist)
    try:
        src = shared_store(versions.physical_settings(settings, old))
        dst = shared_store(versions.physical_settings(settings, new))
        field = next(f for f in src.describe()["fields"] if f["name"] == "vector")
        dst.ensure_collection(int(field["params"]["dim"]), src.collection_model())
        copied = copy_rows(src, dst)
        _copy_ledger(settings, old, new)
        have, expected = dst.count(), shared_ledger(settings).chunk_total(new)
        if not copied == have == expected == src.count():
            raise ReindexError(f"copy of {old} into {new}: {copied} rows copied, {have} in Milvus, the ledger "
                               f"expects {expected}; {old} keeps serving")
        dst.load()
        versions.wait_visible(dst, have)
        versions.swap(settings, new, grace_s)
    except BaseException:
        versions.abandon(settings, new, grace_s)
        raise
    return {"from": old, "to": new, "index": IVF, "nlist": nlist, "rows": have,
            "seconds": round(time.perf_counter() - started, 2)}


def copy_rows(src, dst) -> int:
    """Every row of `src` into `dst`, a page at a time; the BM25 field is the copy's own function output."""
    fields = [f["name"] for f in src.describe()["fields"] if f["name"] != SPARSE_FIELD]
    page, copied = [], 0
    for row in src.rows(None, fields):
        page.append(row)
        if len(page) == COPY_PAGE:
            dst._write("insert", page)
            copied, page = copied + len(page), []
    if page:
        dst._write("insert", page)
        copied += len(page)
    return copied


def _copy_ledger(settings: Settings, old: str, new: str) -> None:
    """The documents and finished runs of `old` as `new`'s: its status, later runs' plans and rebuilds' scopes."""
    ledger = shared_ledger(settings)
    for page in ledger.pages(documents, documents.c.collection == old, size=1000):
        with ledger.engine.begin() as conn:
            conn.execute(documents.insert(), [{**r, "collection": new} for r in page])
    with ledger.engine.begin() as conn:
        done = [dict(r._mapping) for r in conn.execute(select(runs).where(runs.c.collection == old,
                                                                          runs.c.state == "done"))]
        if done:
            conn.execute(runs.insert(), [{**{k: v for k, v in r.items() if k != "id"}, "collection": new}
                                         for r in done])


def reindex_if_due(settings: Settings, log: Callable[..., None] | None = None,
                   warn: Callable[..., None] | None = None) -> dict[str, Any] | None:
    """reindex when due; a failed copy is said (`warn`) and left for the next run: the FLAT collection serves on.
    A FLAT collection replaced earlier is dropped here once its rollback grace period is over."""
    if settings.milvus_is_lite and settings.lite_ivf_rows > 0 and not settings.milvus_index:
        versions.retire_expired(settings)
    if not (rows := due(settings)):
        return None
    try:
        return reindex(settings, rows, log=log)
    except Exception as exc:
        if warn:
            warn("%s stays on its FLAT index for now (the next run tries again): %s: %s",
                 settings.collection, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
