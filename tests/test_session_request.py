"""The typed session request: what it refuses without a daemon."""

from __future__ import annotations

import pytest

from actors.errors import InvalidRequest
from actors.request import parse_session_request


@pytest.mark.parametrize("label", ["a\n", "a\x00", "a\ud800", "", "a b"])
def test_a_label_is_letters_digits_and_a_few_signs_only(label: str):
    # `$` in a regex matches before a final newline: "a\n" used to pass.
    with pytest.raises(InvalidRequest, match="label"):
        parse_session_request({"template": "t", "label": label})


def test_a_good_label_passes():
    assert parse_session_request({"template": "t", "label": "run-1.a:b@c/d+e"}).label == (
        "run-1.a:b@c/d+e"
    )
