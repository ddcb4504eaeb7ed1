"""Versioned physical collections behind the logical name readers use, for rebuilds without downtime.

A logical collection (`Settings.collection`) is served by one physical collection at a time, `<name>__v<N>`. The
ledger's `collections` table records each one: its version, state (building, active, previous, failed, retired), the
model of its vectors and the settings a rebuild pinned for it. A rebuild fills a new version next to the active one,
then swaps; the one it replaced stays, as `previous`, for a grace period (rollback returns to it), then is dropped.

Where readers find the active one depends on the engine:
- A Milvus server has aliases: the logical name is an alias of the active collection, so any Milvus client reading
  the logical name follows a swap, which is one `alter_alias`. The alias is the truth; the ledger mirrors it (a swap
  interrupted between the two is put right by the next writer). The first write creates `<name>__v1` and the alias.
- milvus-lite 2.5.1 has no aliases (every alias call answers UNIMPLEMENTED, checked): the ledger is the truth, and
  Millrace's readers (millrace.search, ingest, status) resolve the name through it. There the first collection
  keeps the logical name itself (version 0), as before versions existed, so code that opens the collection by its
  name keeps working until the first rebuild; rebuilds add `<name>__v1`, `<name>__v2`, ...
A collection created under the logical name before versions existed is version 0 too ("legacy"). On Lite it is
rebuilt like any other; on a server no alias can take the name of an existing collection, so it cannot be swapped
without a gap, and a rebuild says what to do instead.

Every change here runs under the logical name's lease (millrace.ledger.lease), held by the ingest, rebuild or rollback."""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator

from pydantic import BaseModel
from sqlalchemy import select

from millrace.config import ConfigError, Settings
from millrace.index.store import shared_store
from millrace.ledger.book import collections, documents, runs, shared_ledger
from millrace.retry import TransientError, with_retries

DEFAULT_GRACE_S = 24 * 3600.0
# What a rebuild may change, and later ingests then keep (the index: Lite's switch by size, millrace.index.lite_index).
PINNABLE = ("model", "embed_backend", "chunk_size", "chunk_overlap", "milvus_index", "milvus_nlist")


class CollectionVersion(BaseModel):
    """One physical collection of a logical name, as the ledger records it."""

    logical: str
    physical: str
    version: int
    state: str  # building | active | previous | failed | retired
    model: str = ""
    options: dict[str, Any] = {}
    created_at: float
    activated_at: float = 0.0
    retire_after: float = 0.0


def physical_name(logical: str, version: int) -> str:
    return logical if version == 0 else f"{logical}__v{version}"


def has_aliases(settings: Settings) -> bool:
    return not settings.milvus_is_lite


def _store(settings: Settings, name: str):
    return shared_store(settings, name)


def _record(row) -> CollectionVersion:
    values = dict(row._mapping)
    return CollectionVersion(**{**values, "options": json.loads(values["options"] or "{}")})


def registry(settings: Settings, logical: str | None = None) -> list[CollectionVersion]:
    """The physical collections of a logical name, newest version first (retired ones included, as history)."""
    q = (select(collections).where(collections.c.logical == (logical or settings.collection))
         .order_by(collections.c.version.desc()))
    with shared_ledger(settings).engine.connect() as conn:
        return [_record(r) for r in conn.execute(q)]


def _registered(settings: Settings, physical: str) -> CollectionVersion | None:
    with shared_ledger(settings).engine.connect() as conn:
        row = conn.execute(select(collections).where(collections.c.physical == physical)).first()
    return _record(row) if row is not None else None


def _active_row(settings: Settings) -> CollectionVersion | None:
    return next((v for v in registry(settings) if v.state == "active"), None)


def active_physical(settings: Settings) -> str:
    """The physical collection serving the logical name now (read-only: also for status and serving).

    A server: the alias's target; with no alias, the ledger's active one, else the logical name when a (legacy)
    collection has it, else `<name>__v1`, which the first write creates. Lite: the ledger's active one, else the
    logical name."""
    if has_aliases(settings):
        target = _store(settings, settings.collection).describe_alias(settings.collection)
        if target is not None:
            return target
    if (row := _active_row(settings)) is not None:
        return row.physical
    if not has_aliases(settings) or _store(settings, settings.collection).exists():
        return settings.collection
    return physical_name(settings.collection, 1)


def physical_settings(settings: Settings, physical: str) -> Settings:
    """`settings` for one physical collection: its name, and the model and chunking a rebuild pinned for it."""
    row = _registered(settings, physical)
    pinned = {k: v for k, v in (row.options if row else {}).items() if k in PINNABLE}
    if row is not None and "embed_backend" not in pinned:
        from millrace.documents.embed import backend_of

        # The backend its vectors were made with (recorded in its model id): a new default backend must not make a
        # collection built before it refuse its own ingests and queries.
        pinned["embed_backend"] = backend_of(row.model)
    return settings.model_copy(update={**pinned, "collection": physical})


def _set(conn, physical: str, **values) -> None:
    conn.execute(collections.update().where(collections.c.physical == physical).values(**values))


def _insert(conn, settings: Settings, version: int, state: str, model: str = "", options: dict | None = None,
            physical: str | None = None, retire_after: float = 0.0) -> str:
    now = time.time()
    physical = physical or physical_name(settings.collection, version)
    conn.execute(collections.insert().values(
        physical=physical, logical=settings.collection, version=version, state=state, model=model,
        options=json.dumps(options or {}, sort_keys=True), created_at=now,
        activated_at=now if state == "active" else 0.0, retire_after=retire_after))
    return physical


def _version_of(logical: str, physical: str) -> int:
    found = re.fullmatch(re.escape(logical) + r"__v(\d+)", physical)
    return int(found.group(1)) if found else 0


def _mirror_alias(settings: Settings) -> None:
    """Make the ledger agree with the alias (a server's truth), e.g. after a swap that died before its ledger write."""
    if not has_aliases(settings):
        return
    target = _store(settings, settings.collection).describe_alias(settings.collection)
    active = _active_row(settings)
    if target is None or (active is not None and active.physical == target):
        return
    known = _registered(settings, target)
    model = "" if known else (_store(settings, target).collection_model() or "")
    with shared_ledger(settings).engine.begin() as conn:
        if active is not None:
            _set(conn, active.physical, state="previous", retire_after=time.time() + DEFAULT_GRACE_S)
        if known is None:
            _insert(conn, settings, _version_of(settings.collection, target), "active", physical=target, model=model)
        else:
            _set(conn, target, state="active", activated_at=time.time(), retire_after=0.0)


def ensure_registered(settings: Settings) -> str:
    """The physical collection an ordinary ingest writes, registered as active if it is the first (or a legacy)."""
    _mirror_alias(settings)
    if (row := _active_row(settings)) is not None:
        return row.physical
    if (owner := _registered(settings, settings.collection)) is not None:
        raise ConfigError(f"{settings.collection} is a physical collection of {owner.logical}: write it through "
                          f"its logical name (`--collection {owner.logical}`), which serialises with its rebuilds")
    from millrace.documents.embed import model_id

    legacy = _store(settings, settings.collection).exists()
    version = 0 if legacy or not has_aliases(settings) else 1
    model = (_store(settings, settings.collection).collection_model() or "") if legacy else model_id(settings)
    with shared_ledger(settings).engine.begin() as conn:
        return _insert(conn, settings, version, "active", model=model)


def ensure_alias(settings: Settings) -> None:
    """On a server, point the alias at the active collection once it exists (the first write creates it)."""
    row = _active_row(settings)
    if not has_aliases(settings) or row is None or row.physical == settings.collection:
        return
    store = _store(settings, row.physical)
    if store.exists() and store.describe_alias(settings.collection) is None:
        store.point_alias(settings.collection)


@contextmanager
def writing(settings: Settings, physical: str | None = None) -> Iterator[Settings]:
    """The settings an ingest of the logical name writes with: those of `physical` (a rebuild's new collection),
    else of the active one. After a successful write the alias names the active collection."""
    if physical is not None and getattr(_registered(settings, physical), "logical", None) != settings.collection:
        raise ConfigError(f"{physical} is not a registered physical collection of {settings.collection}")
    yield physical_settings(settings, physical or ensure_registered(settings))
    if physical is None:
        ensure_alias(settings)


def new_version(settings: Settings, overrides: dict[str, Any] | None = None,
                grace_s: float = DEFAULT_GRACE_S) -> str:
    """Register the next physical collection (state `building`): it keeps the active one's pinned settings, with
    `overrides` on top. Until it is swapped in it is dropped, like a failed build, `grace_s` after now."""
    from millrace.documents.embed import model_id

    active = ensure_registered(settings)
    unknown = set(overrides or {}) - set(PINNABLE)
    if unknown:
        raise ConfigError(f"a rebuild can change only {', '.join(PINNABLE)}, not {', '.join(sorted(unknown))}")
    current = _registered(settings, active)
    options = {**(current.options if current else {}),
               **{k: v for k, v in (overrides or {}).items() if v not in (None, "")}}
    version = max([v.version for v in registry(settings)] + [0]) + 1
    while _store(settings, physical_name(settings.collection, version)).exists():  # left by a lost ledger
        version += 1
    model = model_id(settings.model_copy(update={k: v for k, v in options.items() if k in PINNABLE}))
    with shared_ledger(settings).engine.begin() as conn:
        return _insert(conn, settings, version, "building", model=model, options=options,
                       retire_after=time.time() + grace_s)


def check_swappable(settings: Settings) -> None:
    """A server cannot put an alias where a collection has the logical name itself: say what to do instead."""
    name = settings.collection
    if has_aliases(settings) and _store(settings, name).describe_alias(name) is None and _store(settings, name).exists():
        raise ConfigError(
            f"collection {name} predates versioned collections: it is a physical collection under the name readers "
            "use, and no Milvus alias can take that name while it exists, so it cannot be swapped without a gap. "
            f"Ingest its sources under a new name (`millrace ingest SOURCE --collection {name}_2`: that creates "
            f"{name}_2__v1 behind the alias {name}_2), point readers at the new name, and drop {name} when nothing "
            f"reads it; from then on `millrace rebuild --collection {name}_2` swaps without downtime")


def wait_visible(store, total: int, wait_s: float = 120.0) -> None:
    """Until a reader at the serving consistency sees all `total` rows of a new collection. Searches run at Bounded
    consistency by default, which may trail the last writes by seconds: a swap sooner would serve part of it."""
    level = store.settings.search_consistency

    def seen() -> int:
        if (n := store.count(consistency=level)) < total:
            raise TransientError(f"{n} of {total} chunks of {store.collection} visible at {level} consistency")
        return n

    with_retries(seen, [1.0] * int(wait_s), what=f"visibility of {store.collection}", jitter=0.0)


def swap(settings: Settings, physical: str, grace_s: float = DEFAULT_GRACE_S) -> str | None:
    """Make `physical` the active collection: on a server one alter_alias, then the ledger. The one it replaces
    becomes `previous`, kept `grace_s` for a rollback. Returns that one (None if there was none)."""
    _mirror_alias(settings)
    if _registered(settings, physical) is None or not _store(settings, physical).exists():
        raise ConfigError(f"cannot swap {settings.collection} to {physical}: no such collection of it")
    if has_aliases(settings):
        check_swappable(settings)
        _store(settings, physical).point_alias(settings.collection)
    old = _active_row(settings)
    now = time.time()
    with shared_ledger(settings).engine.begin() as conn:
        if old is not None and old.physical != physical:
            _set(conn, old.physical, state="previous", retire_after=now + grace_s)
        _set(conn, physical, state="active", activated_at=now, retire_after=0.0)
    return old.physical if old is not None and old.physical != physical else None


def abandon(settings: Settings, physical: str, grace_s: float = DEFAULT_GRACE_S) -> None:
    """A build that will not be swapped in (refused by a gate, or failed): kept `grace_s` to be looked at."""
    with shared_ledger(settings).engine.begin() as conn:
        conn.execute(collections.update().where(collections.c.physical == physical,
                                                collections.c.state == "building")
                     .values(state="failed", retire_after=time.time() + grace_s))


def rollback(settings: Settings, grace_s: float = DEFAULT_GRACE_S) -> tuple[str, str]:
    """Swap back to the collection that served before the active one, if it still exists; returns (from, to)."""
    _mirror_alias(settings)
    active = active_physical(settings)
    earlier = sorted((v for v in registry(settings) if v.state == "previous" and v.activated_at > 0),
                     key=lambda v: v.activated_at, reverse=True)
    target = next((v.physical for v in earlier if _store(settings, v.physical).exists()), None)
    if target is None:
        raise ConfigError(f"collection {settings.collection} has no previous collection to roll back to: one is "
                          "kept only for the grace period after a rebuild's swap")
    swap(settings, target, grace_s)
    return active, target


def retire_expired(settings: Settings, now: float | None = None) -> list[str]:
    """Drop the previous and failed collections whose grace period is over, and their ledger rows; returns them."""
    _mirror_alias(settings)
    now = time.time() if now is None else now
    serving = active_physical(settings)
    ledger, dropped = shared_ledger(settings), []
    for v in registry(settings):
        if v.state in ("previous", "failed", "building") and 0 < v.retire_after <= now and v.physical != serving:
            _store(settings, v.physical).drop()
            ledger.delete_collection(v.physical)
            with ledger.engine.begin() as conn:
                _set(conn, v.physical, state="retired")
            dropped.append(v.physical)
    return dropped


def full_scopes(settings: Settings, physical: str) -> list[dict[str, Any]]:
    """The distinct whole-source scopes (source, include, exclude) of the finished runs into `physical`: what a
    rebuild re-ingests. Runs of named objects or of a date window covered only part of their source."""
    q = select(runs.c.scope).where(runs.c.collection == physical, runs.c.state == "done").order_by(runs.c.id)
    with shared_ledger(settings).engine.connect() as conn:
        scopes = [json.loads(s or "{}") for s in conn.execute(q).scalars()]
    found: dict[str, dict[str, Any]] = {}
    for s in scopes:
        if s.get("source") and s.get("objects") is None and s.get("since") is None:
            scope = {"source": s["source"], "include": s.get("include") or [], "exclude": s.get("exclude") or []}
            found.setdefault(json.dumps(scope, sort_keys=True), scope)
    return list(found.values())


def missing_documents(settings: Settings, old: str, new: str, limit: int = 20) -> list[str]:
    """Source URIs of documents `old` serves that `new` does not know: none, when a rebuild covered every source."""
    newer = select(documents.c.doc_id).where(documents.c.collection == new)
    q = (select(documents.c.source_uri).where(documents.c.collection == old, documents.c.state != "deleted",
                                              documents.c.doc_id.not_in(newer))
         .order_by(documents.c.source_uri).limit(limit))
    with shared_ledger(settings).engine.connect() as conn:
        return list(conn.execute(q).scalars())
