"""Property: nucleus (top-p) filtering of the inference worker turns any finite logits and any top_p in (0, 1]
into a probability distribution that keeps the most likely token - schemathesis found a top_p of 5e-324 (a
valid request) that left none, and the worker's engine stopped on the NaN it sampled from."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_core.serve.sampling import top_p_filter

logits = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=1, max_size=64)
top_ps = st.floats(min_value=0.0, max_value=1.0, exclude_min=True) | st.sampled_from([5e-324, 1e-45, 1e-9])


@settings(max_examples=300, deadline=None)
@given(logits, top_ps, st.floats(min_value=1e-3, max_value=10.0))
def test_top_p_filter_keeps_a_distribution_with_the_most_likely_token(values, top_p, temperature):
    probs = torch.softmax(torch.tensor(values) / temperature, dim=-1)
    kept = top_p_filter(probs, top_p)
    assert torch.isfinite(kept).all() and (kept >= 0).all()
    assert abs(float(kept.sum()) - 1.0) < 1e-4
    assert kept[probs == probs.max()].sum() > 0  # a most likely token (ties: any of them)
    assert int(torch.multinomial(kept, 1).item()) in torch.nonzero(kept).flatten().tolist()
