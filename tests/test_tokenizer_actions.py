"""Action tokenizer: OpenVLA binning semantics and round-trip error bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wmpo_core.policy.action_tokenizer import ActionTokenizer
from wmpo_core.policy.text_tokenizer import build_text_tokenizer, load_text_tokenizer

VOCAB = 768


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-1.0, 1.0, allow_nan=False)))
def test_round_trip_within_half_a_bin(actions):
    tok = ActionTokenizer(VOCAB)
    ids = tok.encode(actions)
    assert ids.min() >= VOCAB - 256 and ids.max() <= VOCAB - 1
    err = np.abs(tok.decode(ids) - actions)
    assert err.max() <= tok.bin_width / 2 + 1e-6


def test_openvla_mapping_endpoints_and_monotonicity():
    tok = ActionTokenizer(VOCAB)
    # digitize(-1) = 1 -> last id; digitize(+1) = 256 -> first action id, decoded on the top center
    assert tok.encode(np.array([-1.0]))[0] == VOCAB - 1
    assert tok.encode(np.array([1.0]))[0] == VOCAB - 256
    assert tok.decode(np.array([VOCAB - 256]))[0] == pytest.approx(tok.bin_centers[-1])
    assert tok.decode(np.array([VOCAB - 1]))[0] == pytest.approx(tok.bin_centers[0])
    ids = tok.encode(np.linspace(-1, 1, 1001))
    assert np.all(np.diff(ids) <= 0), "larger actions must map to smaller token ids"
    # out of range is clipped, never wrapped
    assert tok.encode(np.array([5.0, -5.0])).tolist() == [VOCAB - 256, VOCAB - 1]


def test_decode_rejects_text_tokens_and_nan():
    tok = ActionTokenizer(VOCAB)
    with pytest.raises(ValueError, match="token ids must lie"):
        tok.decode(np.array([3]))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(np.array([np.nan]))


def test_text_tokenizer_is_deterministic_and_round_trips(tmp_path):
    a, b = build_text_tokenizer(["wipe the table"]), build_text_tokenizer(["wipe the table"])
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 512
    text = "In: What action should the robot take to stack the ünïcode cube?\nOut:"
    assert a.decode(a.encode(text).ids) == text  # byte-level: nothing is unknown
    (tmp_path / "tokenizer.json").write_text(a.to_str())
    assert load_text_tokenizer(tmp_path / "tokenizer.json").encode(text).ids == a.encode(text).ids
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_text_tokenizer(tmp_path / "bad.json")
