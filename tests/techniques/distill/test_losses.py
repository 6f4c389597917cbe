"""Each KD loss against values worked out by hand (with ``math``) on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from autoslim.errors import AutoslimError
from autoslim.techniques.distill._losses import (
    activation_attention,
    attention_map_kd,
    attention_probs,
    attention_transfer,
    feature_kd,
    info_nce,
    linear_ramp,
    mask_bias,
    pairwise_distances,
    phase_weights,
    projected_attention_probs,
    response_kd,
    rkd_angle,
    rkd_distance,
    soft_kl,
)

T = torch.tensor


def approx(x: torch.Tensor, value: float) -> None:
    assert float(x) == pytest.approx(value, abs=1e-6)


def test_soft_kl_at_temperature_one():
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    approx(
        soft_kl(T([[0.0, 0.0]]), T([[math.log(3), 0.0]]), 1.0),
        0.75 * math.log(1.5) + 0.25 * math.log(0.5),
    )


def test_soft_kl_has_the_t_squared_factor():
    # At T = 2 the teacher becomes (√3, 1)/(√3 + 1); the KL is multiplied by T² = 4.
    pt = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = pt * math.log(pt / 0.5) + (1 - pt) * math.log((1 - pt) / 0.5)
    approx(soft_kl(T([[0.0, 0.0]]), T([[math.log(3), 0.0]]), 2.0), 4 * kl)


def test_soft_kl_is_zero_for_equal_logits_and_averages_over_the_batch():
    approx(soft_kl(T([[1.0, 2.0, 3.0]]), T([[1.0, 2.0, 3.0]]), 3.0), 0.0)
    one = soft_kl(T([[0.0, 0.0]]), T([[math.log(3), 0.0]]), 1.0)
    two = soft_kl(T([[0.0, 0.0], [5.0, 5.0]]), T([[math.log(3), 0.0], [1.0, 1.0]]), 1.0)
    approx(two, float(one) / 2)


def test_response_kd_mixes_soft_and_hard_terms_with_alpha():
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = response_kd(
        T([[0.0, 0.0]]), T([[math.log(3), 0.0]]), T([0]), alpha=0.25, temperature=1.0
    )
    approx(loss, 0.25 * kl + 0.75 * math.log(2))


def test_feature_kd_is_mse_and_rejects_shape_mismatch():
    approx(feature_kd(T([[1.0, 2.0]]), T([[0.0, 0.0]])), 2.5)
    with pytest.raises(AutoslimError, match="equal shapes"):
        feature_kd(T([[1.0, 2.0]]), T([[0.0]]))


def test_activation_attention_is_the_normalised_channel_mean_of_squares():
    features = T([[[1.0, 2.0], [3.0, 0.0]]])  # batch 1, 2 channels, length 2
    torch.testing.assert_close(activation_attention(features), T([[5.0, 2.0]]) / math.sqrt(29))


def test_attention_transfer_compares_maps_of_different_channel_counts():
    student = T([[[1.0, 2.0], [3.0, 0.0]]])
    teacher = T([[[0.0, 1.0]]])  # one channel: map (0, 1)
    expected = ((5 / math.sqrt(29)) ** 2 + (2 / math.sqrt(29) - 1) ** 2) / 2
    approx(attention_transfer(student, teacher), expected)
    with pytest.raises(AutoslimError, match="differ in size"):
        attention_transfer(student, T([[[0.0, 1.0, 2.0]]]))


def test_attention_probs_average_heads():
    query = T([[[1.0, 0.0], [2.0, 0.0]]])  # batch 1, 2 tokens, embed 2
    # Head 0 reads feature 0 for q and k; head 1 has zero weights, so it attends uniformly.
    weight = torch.zeros(6, 2)
    weight[0, 0] = weight[2, 0] = 1.0
    probs = attention_probs(query, weight, None, num_heads=2)
    row0 = [math.exp(1) / (math.exp(1) + math.exp(2)), math.exp(2) / (math.exp(1) + math.exp(2))]
    row1 = [math.exp(2) / (math.exp(2) + math.exp(4)), math.exp(4) / (math.exp(2) + math.exp(4))]
    expected = (T([[row0, row1]]) + 0.5) / 2
    torch.testing.assert_close(probs, expected)


def test_projected_attention_probs_average_heads_and_zero_padded_keys():
    hidden = T([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # batch 1, 3 tokens, width 2
    eye = (torch.eye(2), None)  # q = k = hidden: head 0 reads feature 0, head 1 feature 1
    keep = T([True, True, False]).view(1, 1, 1, 3)  # the third token is padding
    e = math.e
    # Per head, softmax over the two real keys of q_i·k_j (head_dim 1: scale 1).
    a, b = e / (e + 1), 1 / (e + 1)
    expected = T(
        [
            [
                [(a + 0.5) / 2, (b + 0.5) / 2, 0.0],
                [(0.5 + b) / 2, (0.5 + a) / 2, 0.0],
                [0.5, 0.5, 0.0],
            ]
        ]
    )
    for mask in (keep, mask_bias(keep), torch.where(keep, 0.0, torch.finfo(torch.float32).min)):
        probs = projected_attention_probs(hidden, eye, eye, 2, mask=mask)
        torch.testing.assert_close(probs, expected)
        assert bool((probs[..., 2] == 0).all())  # exactly 0, not merely small
    # No mask: the third key takes part; one head of width 2 with an explicit scale.
    probs = projected_attention_probs(hidden, eye, eye, 1, scale=1.0)
    row = T([1.0, 0.0, 1.0]).exp()
    torch.testing.assert_close(probs[0, 0], row / row.sum())


def test_mask_bias_keeps_true_and_passes_float_masks_through():
    keep = T([[True, False]])
    assert mask_bias(keep).tolist() == [[0.0, torch.finfo(torch.float32).min]]
    bias = mask_bias(T([[0.0, -5.0]], dtype=torch.float16))
    assert bias.dtype == torch.float32 and bias.tolist() == [[0.0, -5.0]]


def test_attention_map_kd_is_row_kl():
    approx(
        attention_map_kd(T([[[0.25, 0.75]]]), T([[[0.5, 0.5]]])),
        0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75),
    )


def test_pairwise_distances_of_a_3_4_5_triangle():
    d = pairwise_distances(T([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]]))
    torch.testing.assert_close(d, T([[0.0, 5.0, 4.0], [5.0, 0.0, 3.0], [4.0, 3.0, 0.0]]))


def test_rkd_distance_by_hand():
    student = T([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3 (mean 4)
    teacher = T([[0.0], [1.0], [2.0]])  # distances 1, 2, 1 (mean 4/3)
    # normalised differences 0.5, -0.5, 0 (each twice in the 3×3 matrix); smooth-L1 = x²/2
    approx(rkd_distance(student, teacher), 2 * (0.125 + 0.125) / 9)
    approx(rkd_distance(student, 2 * student), 0.0)  # scale-invariant


def test_rkd_angle_by_hand():
    student = T([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # cosines at the vertices: 0.8, 0.6, 0
    teacher = T([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # collinear: 1, -1, 1
    # differences -0.2, 1.6, -1 -> smooth-L1 0.02, 1.1, 0.5, each twice among 27 entries
    approx(rkd_angle(student, teacher), 2 * (0.02 + 1.1 + 0.5) / 27)


def test_info_nce_with_in_batch_negatives():
    eye = torch.eye(2)
    approx(info_nce(eye, eye, 1.0), math.log(1 + math.exp(-1)))
    approx(
        info_nce(T([[2.0, 0.0], [0.0, 3.0]]), eye, 0.5), math.log(1 + math.exp(-2))
    )  # inputs normalised


def test_phase_weights_at_given_epochs():
    kw = {
        "early_until": 2,
        "late_from": 5,
        "early": {"feature": 2.0},
        "middle": {"response": 0.5},
        "late": {"response": 3.0, "feature": 0.0},
    }
    assert phase_weights(0, **kw)["feature"] == 2.0 and phase_weights(1, **kw)["response"] == 1.0
    assert phase_weights(2, **kw)["response"] == 0.5 and phase_weights(4, **kw)["feature"] == 1.0
    assert phase_weights(5, **kw) | {} == {
        "response": 3.0,
        "feature": 0.0,
        "attention": 1.0,
        "relation": 1.0,
        "contrastive": 1.0,
    }


def test_linear_ramp_at_given_epochs():
    assert [
        linear_ramp(e, start=0.0, end=1.0, ramp_epochs=4)["feature"] for e in (0, 1, 2, 4, 9)
    ] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert linear_ramp(3, start=2.0, end=1.0, ramp_epochs=0)["response"] == 1.0
