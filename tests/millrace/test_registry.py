"""One client per process and configuration: every door (the factory, a room's own accessor) gets the same one, a
secret never appears in a key, and forgetting closes what it drops."""

import pytest
from hypothesis import given, strategies as st
from pydantic import SecretStr

from millrace import clients, registry
from millrace.config import Settings
from millrace.events.queue import shared_queue
from millrace.ledger.book import shared_ledger

pytestmark = pytest.mark.unit


def test_the_factory_and_the_rooms_share_one_client(tmp_path):
    s = Settings(home=tmp_path / "home")
    assert clients.ledger(s) is shared_ledger(s) is clients.ledger(s.model_copy())
    assert clients.change_queue(s) is shared_queue(s)
    other = Settings(home=tmp_path / "other")
    assert clients.ledger(other) is not clients.ledger(s)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_secret_enters_a_key_as_a_digest(secret, other):
    digest = registry.digest(SecretStr(secret))
    assert digest == registry.digest(secret) and len(digest) == 16 and int(digest, 16) >= 0
    assert (registry.digest(other) == digest) == (other == secret)
    assert registry.digest(SecretStr("")) == "" == registry.digest(None)


def test_a_secret_never_appears_in_a_cache_key(tmp_path):
    secret = "s3cr3t-token-value-0123456789"
    s = Settings(home=tmp_path / "home", milvus_token=secret, s3_key="k", s3_secret=secret)
    clients.ledger(s)
    from millrace.sources.s3 import shared_filesystem

    shared_filesystem(s)
    assert registry._cache and not any(secret in repr(key) for key in registry._cache)


def test_forget_drops_and_closes_only_the_clients_of_one_milvus_uri():
    closed = []

    class Client:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    a = registry.shared(("milvus", "uri-a", "x"), lambda: Client("a"))
    b = registry.shared(("milvus", "uri-b", "x"), lambda: Client("b"))
    assert registry.shared(("milvus", "uri-a", "x"), lambda: Client("again")) is a
    registry.forget("uri-a")
    assert closed == ["a"]
    assert registry.shared(("milvus", "uri-a", "x"), lambda: Client("new")).name == "new"
    assert registry.shared(("milvus", "uri-b", "x"), lambda: Client("again")) is b
    registry.forget("uri-a")
    registry.forget("uri-b")
    assert closed == ["a", "new", "b"]
