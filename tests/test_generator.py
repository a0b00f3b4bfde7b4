"""The conditional generator: shapes, per-class conditional batch norm, what the label controls; ensembles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpsc_dfkd.errors import UserError
from cpsc_dfkd.models.generator import (
    ConditionalBatchNorm2d,
    ConditionalGenerator,
    GeneratorEnsemble,
    UnconditionalGenerator,
    UpsampleConv2d,
    create_generator,
)


@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(size, channels):
    g = ConditionalGenerator(nz=8, ngf=4, image_size=size, channels=channels, num_classes=5)
    out = g(torch.randn(6, 8), torch.arange(6) % 5)
    assert out.shape == (6, channels, size, size)


def test_conditional_batchnorm_starts_as_plain_batchnorm():
    cbn = ConditionalBatchNorm2d(3, num_classes=4)
    x = torch.randn(8, 3, 5, 5)
    expected = torch.nn.functional.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(cbn(x, torch.randint(0, 4, (8,))), expected)
    assert torch.all(cbn.scale.weight == 1) and torch.all(cbn.shift.weight == 0)


def test_conditional_batchnorm_applies_the_scale_and_shift_of_each_label():
    cbn = ConditionalBatchNorm2d(2, num_classes=3)
    with torch.no_grad():
        cbn.scale.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
        cbn.shift.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [-1.0, -1.0]]))
    x = torch.randn(6, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    normalised = torch.nn.functional.batch_norm(x, None, None, training=True)
    out = cbn(x, y)
    torch.testing.assert_close(out[1], normalised[1] * 2 + 5)
    torch.testing.assert_close(out[2], normalised[2] * 3 - 1)


def test_label_changes_the_image_for_fixed_noise_once_embeddings_differ():
    torch.manual_seed(0)
    g = ConditionalGenerator(nz=8, ngf=4, image_size=16, channels=1, num_classes=2)
    with torch.no_grad():
        for module in g.modules():
            if isinstance(module, ConditionalBatchNorm2d):
                module.shift.weight[1] += 1.0
    z = torch.randn(4, 8)
    a = g(z, torch.zeros(4, dtype=torch.long))
    b = g(z, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)


def test_unconditional_generator_needs_no_label():
    g = UnconditionalGenerator(nz=8, ngf=4, image_size=32, channels=3, num_classes=10)
    assert g(torch.randn(3, 8)).shape == (3, 3, 32, 32)


def test_conditional_generator_refuses_missing_labels():
    g = ConditionalGenerator(nz=8, ngf=4, image_size=32, channels=3, num_classes=10)
    with pytest.raises(ValueError, match="labels"):
        g(torch.randn(3, 8))


def test_unsupported_image_size_is_a_user_error():
    with pytest.raises(UserError, match="16, 32 or 64"):
        ConditionalGenerator(image_size=28)


def test_ensemble_gives_every_member_an_equal_share_of_every_class_in_any_label_order():
    g = create_generator(True, nz=8, ngf=4, image_size=16, channels=1, num_classes=5, members=3)
    for y in (torch.arange(30) % 5, torch.arange(30) // 6, torch.randperm(30) % 5):
        owner = g.assign(30, y)
        for c in range(5):
            assert torch.bincount(owner[y == c], minlength=3).tolist() == [2, 2, 2]


def test_ensemble_row_is_made_by_its_member_from_its_own_noise_and_label():
    torch.manual_seed(0)
    g = create_generator(True, nz=8, ngf=4, image_size=16, channels=1, num_classes=2, members=2).eval()
    z, y = torch.randn(8, 8), torch.tensor([0, 1, 1, 0, 0, 1, 1, 0])
    out = g(z, y)
    owner = g.assign(8, y)
    for k, member in enumerate(g.members):
        mine = owner == k
        torch.testing.assert_close(out[mine], member(z[mine], y[mine]))
    # members start from different initialisations, so they make different images of the same input
    assert not torch.allclose(g.members[0](z, y), g.members[1](z, y))


def test_ensemble_of_unconditional_generators_and_single_member_stays_plain():
    u = create_generator(False, nz=8, ngf=4, image_size=32, channels=3, num_classes=10, members=3)
    assert isinstance(u, GeneratorEnsemble) and u(torch.randn(7, 8)).shape == (7, 3, 32, 32)
    assert isinstance(create_generator(True, 8, 4, 32, 3, 10, members=1), ConditionalGenerator)
    with pytest.raises(UserError, match="generator.members"):
        create_generator(True, 8, 4, 32, 3, 10, members=0)


@pytest.mark.parametrize("conditional", [True, False])
def test_range_output_keeps_every_pixel_between_black_and_white_of_each_channel(conditional):
    low, high = (-0.8, -2.0, -1.0), (2.0, 0.5, 1.0)
    g = create_generator(conditional, 8, 4, 16, 3, 10, members=2, pixel_range=(low, high))
    with torch.no_grad():  # push the last convolution far into both tails of the sigmoid
        for member in g.members:
            member.to_image.weight.mul_(50)
    out = g(torch.randn(40, 8), torch.arange(40) % 10)
    for c in range(3):
        assert out[:, c].min() >= low[c] and out[:, c].max() <= high[c]
        assert out[:, c].min() < low[c] + 0.05 and out[:, c].max() > high[c] - 0.05  # both ends are reachable
    assert not any(name.startswith("norm_out") for name, _ in g.members[0].named_parameters())


def test_the_default_output_is_the_papers_tanh_then_batch_norm():
    g = ConditionalGenerator(nz=8, ngf=4, image_size=16, channels=1, num_classes=2)
    assert isinstance(g.norm_out, ConditionalBatchNorm2d) and not hasattr(g, "low")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, widths", [((3, 4, 5, 7), (4, 6)), ((2, 16, 8, 8), (16, 8))])
def test_upsample_conv_computes_nearest_upsampling_then_the_3x3_convolution(shape, widths, channels_last):
    torch.manual_seed(0)
    ours = UpsampleConv2d(*widths)
    theirs = nn.Conv2d(*widths, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())  # same parameters, same state-dict layout
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    mine, reference = ours(x), theirs(F.interpolate(x, scale_factor=2, mode="nearest"))
    assert mine.shape == reference.shape == (shape[0], widths[1], 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(reference)
    got = torch.autograd.grad(mine, (x, ours.weight, ours.bias), upstream)
    want = torch.autograd.grad(reference, (x, theirs.weight, theirs.bias), upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_generator_upsamples_with_upsample_convs():
    g = ConditionalGenerator(nz=8, ngf=4, image_size=32, channels=1)
    assert [type(c) for c in g.convs] == [UpsampleConv2d, UpsampleConv2d]
    assert set(g.state_dict()) >= {"convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias"}
