"""IVF sizing: lists grow with the collection, and a search visits a fixed share of them (never fewer than 16, never
more than there are), read from the index as Milvus describes it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from millrace.index.connect import (_SEARCH, NPROBE_SHARE, build_params, nlist_for, nprobe_for,
                                     search_params)

pytestmark = pytest.mark.unit


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_lists_grow_with_the_rows_within_bounds(a, b):
    small, large = sorted((a, b))
    assert 64 <= nlist_for(small) <= nlist_for(large) <= 16384


@given(st.integers(1, 65536))
def test_a_search_visits_a_share_of_the_lists_never_fewer_than_16_nor_more_than_exist(nlist):
    nprobe = nprobe_for(nlist)
    assert nprobe <= nlist and nprobe >= min(16, nlist)
    assert nprobe * NPROBE_SHARE >= nlist or nprobe == 16


@given(st.sampled_from(["IVF_FLAT", "ivf_flat", "IVF_SQ8", "GPU_IVF_FLAT"]), st.integers(1, 65536))
def test_ivf_search_params_follow_the_nlist_milvus_reports(kind, nlist):
    params = search_params({"index_type": kind, "nlist": str(nlist), "metric_type": "COSINE"})
    assert params["nprobe"] == nprobe_for(nlist)
    assert build_params(kind.upper(), nlist)["nlist"] == nlist


@pytest.mark.parametrize("kind", ["HNSW", "FLAT", "AUTOINDEX", "GPU_CAGRA"])
def test_other_indexes_search_as_configured(kind):
    assert search_params({"index_type": kind, "M": "16"}) == _SEARCH.get(kind, {})
    assert build_params(kind, 4096) == build_params(kind)  # nlist means nothing to them
