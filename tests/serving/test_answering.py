"""What makes two questions the same question for the semantic answer cache."""

from __future__ import annotations

import pytest

from serving.answering import content_words

pytestmark = pytest.mark.unit


def test_a_semantic_hit_needs_the_same_content_words():
    question = "How many days of paid leave do new employees get?"
    assert content_words(question) == content_words("how many paid leave days do new employees get")
    assert content_words(question) != content_words("How many days of paid leave do new employees lose?")
    assert content_words("Aspirin reduces the risk") != content_words("Aspirin increases the risk")
