"""Routing the keys of an S3 event batch to the configured sources that hold them."""

from urllib.parse import quote

import pytest
from hypothesis import given, strategies as st

from millrace.sources.base import route_keys
from millrace.uris import relative_name, s3_uri

pytestmark = pytest.mark.unit

segment = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1,
                  max_size=12).filter(lambda s: s not in (".", ".."))
key = st.lists(segment, min_size=1, max_size=3).map("/".join)


@given(keys=st.lists(key, max_size=12), prefix=segment)
def test_every_key_goes_to_at_most_one_source_and_back_to_the_same_object(keys, prefix):
    sources = [f"s3://b/{prefix}", f"s3://b/{prefix}/deeper", "s3://other/x"]
    routed = route_keys("b", keys, sources)
    placed = [(root, rel) for root, rels in routed.items() for rel in rels]
    assert len({s3_uri("b", k) for k in keys if k.startswith(prefix + "/")}) == len(placed)
    uris = {s3_uri("b", k) for k in keys}
    for root, rel in placed:
        assert f"{root}/{quote(rel, safe='/')}" in uris and relative_name(root, f"{root}/{quote(rel, safe='/')}") == rel
    # Without configured sources of the bucket, events cover the whole bucket.
    assert sum(len(v) for v in route_keys("b", keys, ["s3://other/x"]).values()) == len(set(keys))


def test_the_deepest_configured_source_wins():
    routed = route_keys("b", ["p/deeper/x.txt", "p/y.txt", "q/z.txt"], ["s3://b/p", "s3://b/p/deeper/"])
    assert routed == {"s3://b/p/deeper": ["x.txt"], "s3://b/p": ["y.txt"]}
