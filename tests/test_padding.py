"""pad_rows: the one left/right padding used by the trainer's batches, HF rollouts and the local teacher."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from omniopd.rollout.padding import pad_rows


def test_left_and_right_by_hand():
    ids, mask = pad_rows([[5, 6], [7]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_rows([[5, 6], [7]], pad_id=9, side="right", width=3)
    assert ids.tolist() == [[5, 6, 9], [7, 9, 9]] and mask.tolist() == [[1, 1, 0], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="width 1 is shorter than the longest row"):
        pad_rows([[1, 2]], 0, side="left", width=1)
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        pad_rows([[1]], 0, side="middle")  # type: ignore[arg-type]


@given(st.lists(st.lists(st.integers(1, 50), max_size=6), min_size=1, max_size=5), st.sampled_from(["left", "right"]))
def test_the_mask_recovers_every_row(rows, side):
    ids, mask = pad_rows(rows, pad_id=0, side=side)
    assert ids.shape == (len(rows), max(map(len, rows)))
    assert [r[m.bool()].tolist() for r, m in zip(ids, mask)] == rows
    real = mask.bool()
    if ids.shape[1] == 0:
        return
    edge = real[:, -1] if side == "left" else real[:, 0]  # real tokens touch the padded side's far end
    assert edge.tolist() == [bool(r) for r in rows]
