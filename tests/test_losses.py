"""Each loss term against values known by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpsc_dfkd.losses import (
    ActivationTap,
    BatchNormStatistics,
    activation_loss,
    attention_transfer_loss,
    feature_share_masks,
    ikd_loss,
    information_entropy_loss,
    kl_divergence,
    l1_logit_distance,
    mode_seeking_loss,
    one_hot_loss,
    pseudo_cross_entropy,
    supervised_contrastive_loss,
    total_variation_loss,
)


def test_kl_is_zero_on_identical_logits_and_positive_otherwise():
    logits = torch.randn(5, 10)
    assert kl_divergence(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_divergence(logits, torch.randn(5, 10)).item() > 0


def test_kl_matches_the_definition():
    t, s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p, q = F.softmax(t, 1), F.softmax(s, 1)
    expected = (p * (p.log() - q.log())).sum()
    assert kl_divergence(t, s).item() == pytest.approx(expected.item(), rel=1e-5)


def test_l1_distance_and_ikd_are_mean_errors():
    t, s = torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 1.0]])
    assert l1_logit_distance(t, s).item() == pytest.approx(1.5)
    assert ikd_loss(s, t).item() == pytest.approx(2.5)
    assert ikd_loss(s, t, log=True).item() == pytest.approx(math.log(2.5), rel=1e-5)


def test_pseudo_cross_entropy_takes_logits_and_can_reproduce_the_double_softmax():
    logits, labels = torch.tensor([[3.0, 0.0, -1.0]]), torch.tensor([0])
    assert pseudo_cross_entropy(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    double = F.cross_entropy(F.softmax(logits, 1), labels).item()
    assert pseudo_cross_entropy(logits, labels, on_softmax=True).item() == pytest.approx(double)
    assert double > pseudo_cross_entropy(logits, labels).item()  # softmax twice cannot reach zero loss


def test_supcon_matches_a_hand_computed_value():
    # Two samples of different classes, two identical views each, orthogonal: for every anchor the one
    # positive has similarity 1 and the two negatives 0, so the loss is log(e + 2) - 1 at T = 1.
    features = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    loss = supervised_contrastive_loss(features, torch.tensor([0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)


def _naive_supcon(features, labels, temperature):
    views = torch.cat(torch.unbind(F.normalize(features, dim=2), dim=1))
    lab = labels.repeat(features.shape[1])
    total = 0.0
    for i in range(len(views)):
        others = [a for a in range(len(views)) if a != i]
        denom = sum(math.exp(float(views[i] @ views[a]) / temperature) for a in others)
        positives = [p for p in others if lab[p] == lab[i]]
        total += -sum(float(views[i] @ views[p]) / temperature - math.log(denom) for p in positives) / len(positives)
    return total / len(views)


def test_supcon_matches_a_naive_loop_on_a_random_batch():
    torch.manual_seed(0)
    features, labels = torch.randn(6, 2, 4), torch.tensor([0, 1, 0, 2, 1, 0])
    loss = supervised_contrastive_loss(features, labels, temperature=0.5)
    assert loss.item() == pytest.approx(_naive_supcon(features, labels, 0.5), rel=1e-5)


def test_supcon_gradients_are_finite_at_the_paper_temperature():
    features = torch.randn(16, 2, 8, requires_grad=True)
    supervised_contrastive_loss(features, torch.arange(16) % 4, temperature=0.07).backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("normalized", [False, True])
def test_bn_statistics_loss_is_zero_when_batch_statistics_equal_running_ones(normalized):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).eval()
    x = torch.randn(8, 1, 6, 6)
    with torch.no_grad():
        h = model[0](x)
        model[1].running_mean.copy_(h.mean((0, 2, 3)))
        model[1].running_var.copy_(h.var((0, 2, 3), unbiased=False))
    hooks = BatchNormStatistics(model, normalized=normalized)
    hooks.active = True
    model(x)
    assert hooks.loss().item() == pytest.approx(0.0, abs=1e-4)


def test_bn_statistics_loss_is_the_sum_of_mean_and_variance_gaps():
    model = nn.Sequential(nn.BatchNorm2d(2)).eval()  # running mean 0, running var 1
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = 3.0  # channel 0: mean 3, var 0; channel 1: mean 0, var 0
    hooks = BatchNormStatistics(model)
    hooks.active = True
    model(x)
    expected = math.sqrt(3.0**2) + math.sqrt(1.0 + 1.0)
    assert hooks.loss().item() == pytest.approx(expected, rel=1e-5)


def test_bn_statistics_first_layer_weight_scales_only_the_first_layer():
    model = nn.Sequential(nn.BatchNorm2d(1), nn.BatchNorm2d(1)).eval()  # running mean 0, var 1; eval: identity
    x = torch.zeros(4, 1, 3, 3)  # each layer: mean gap 0, variance gap 1
    for weight, expected in ((1.0, 2.0), (10.0, 11.0)):
        hooks = BatchNormStatistics(model, first_layer_weight=weight)
        hooks.active = True
        model(x)
        assert hooks.loss().item() == pytest.approx(expected, rel=1e-4)
        hooks.remove()


def test_bn_statistics_record_nothing_while_inactive():
    model = nn.Sequential(nn.BatchNorm2d(2)).eval()
    hooks = BatchNormStatistics(model)
    model(torch.randn(4, 2, 3, 3))
    with pytest.raises(RuntimeError, match="no BatchNorm statistics"):
        hooks.loss()


def test_mode_seeking_loss_is_high_when_a_class_collapses_and_compares_same_class_rows_only():
    noise = torch.randn(30, 4)
    varied = torch.randn(30, 1, 4, 4)
    collapsed_per_class = varied[:10].repeat(3, 1, 1, 1)  # rows i and i + 10 identical: every class one image
    assert mode_seeking_loss(collapsed_per_class, noise, period=10) > 100 * mode_seeking_loss(varied, noise, 10)
    # Different classes looking alike is not collapse: only rows 10 apart are compared.
    one_image_per_row_class = torch.randn(10, 1, 4, 4).repeat_interleave(3, 0)
    assert mode_seeking_loss(one_image_per_row_class, noise, period=10) < 10
    with pytest.raises(ValueError, match="more than 10 rows"):
        mode_seeking_loss(varied[:10], noise[:10], period=10)


def test_dafl_terms_have_the_documented_signs():
    confident, unsure = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert one_hot_loss(confident) < one_hot_loss(unsure)
    assert activation_loss(torch.full((2, 3), 2.0)).item() == pytest.approx(-2.0)
    balanced = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    one_class = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    assert information_entropy_loss(balanced) < information_entropy_loss(one_class)
    assert information_entropy_loss(balanced).item() == pytest.approx(-math.log(2), rel=1e-3)


def test_total_variation_is_zero_on_flat_images():
    assert total_variation_loss(torch.ones(2, 3, 8, 8)).item() == 0.0
    assert total_variation_loss(torch.randn(2, 3, 8, 8)).item() > 0


def test_attention_transfer_is_zero_for_equal_maps_and_ignores_channel_count():
    a = torch.randn(2, 8, 4, 4)
    assert attention_transfer_loss([a], [a]).item() == pytest.approx(0.0, abs=1e-7)
    half_channels = a[:, ::2]
    assert attention_transfer_loss([half_channels], [a]).item() >= 0


def test_activation_tap_keeps_outputs_only_while_active():
    layer = nn.ReLU()
    tap = ActivationTap([layer])
    layer(torch.ones(1))
    assert tap.take() == []
    tap.active = True
    layer(torch.ones(1))
    assert len(tap.take()) == 1


def test_feature_share_masks_keep_the_share_per_generator_and_depend_on_the_seed_alone():
    masks = feature_share_masks(members=8, dim=84, share=0.5, seed=3)
    assert masks.shape == (8, 84)
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    assert masks.sum(1).tolist() == [42.0] * 8
    assert len({tuple(row.tolist()) for row in masks}) == 8  # every generator reads its own share
    assert torch.equal(masks, feature_share_masks(8, 84, 0.5, seed=3))
    assert not torch.equal(masks, feature_share_masks(8, 84, 0.5, seed=4))
    assert feature_share_masks(2, 10, 0.01, seed=0).sum(1).tolist() == [1.0, 1.0]  # never an empty share
