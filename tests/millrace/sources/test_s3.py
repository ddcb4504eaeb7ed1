"""The S3 source's named lookups (a draining round's keys): listing their key range answers exactly what one HEAD per
key answers, whatever the names, gaps, page boundaries and listing budget."""

import uuid

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millrace.config import Settings
from millrace.sources import s3 as s3source
from millrace.sources.s3 import S3Source
from millrace.uris import relative_name

# Ordinary messy names: spaces, accents, '#', '+', '%', CJK, sub-folders; and code points that sort differently
# from their UTF-16 order, which a listing in the wrong order would get wrong.
PARTS = ["a", "b b", "café", "#1", "x+y", "100%", "日本", "Z", "sub/", "é/", "𝔘", "~"]


def _settings(endpoint: str) -> Settings:
    return Settings(s3_endpoint_url=endpoint, s3_key="testing", s3_secret="testing", s3_region="us-east-1",
                    retry_delays=[])


@pytest.fixture(scope="module")
def listing_bucket(moto_s3):
    client = boto3.client("s3", endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket="named-lookups")
    return client


names = st.lists(st.lists(st.sampled_from(PARTS), min_size=1, max_size=4).map(lambda p: "".join(p) + ".txt"),
                 min_size=1, max_size=40, unique=True)


@pytest.mark.integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(present=names, absent=names, data=st.data())
def test_listing_a_key_range_finds_what_heads_find(moto_s3, listing_bucket, present, absent, data):
    prefix = f"p {uuid.uuid4().hex[:8]} dir"  # a fresh prefix: a replayed example must not see an earlier one's keys
    per_named, page = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 7))
    for i, name in enumerate(present):
        listing_bucket.put_object(Bucket="named-lookups", Key=f"{prefix}/{name}", Body=b"x" * i)
    asked = data.draw(st.lists(st.sampled_from(present), unique=True)) + [a for a in absent if a not in present]
    source = S3Source(f"s3://named-lookups/{prefix}", _settings(moto_s3))

    def lookup(from_keys: int, per_named: int, page: int) -> dict[str, tuple]:
        old = s3source.LIST_FROM_KEYS, s3source.LIST_KEYS_PER_NAMED, s3source.LIST_PAGE_KEYS
        s3source.LIST_FROM_KEYS, s3source.LIST_KEYS_PER_NAMED, s3source.LIST_PAGE_KEYS = from_keys, per_named, page
        try:
            return {relative_name(source.uri, o.uri): (o.size, o.fingerprint) for o in source.named(asked)}
        finally:
            s3source.LIST_FROM_KEYS, s3source.LIST_KEYS_PER_NAMED, s3source.LIST_PAGE_KEYS = old

    headed = lookup(10**6, 4, 1000)
    assert set(headed) == set(asked) & set(present)
    listed = lookup(1, per_named, page)
    assert listed == headed
