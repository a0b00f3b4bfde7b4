"""The conditional generator: shapes, per-class conditional batch norm, and what the label controls."""
from __future__ import annotations

import pytest
import torch

from cpsc_dfkd.errors import UserError
from cpsc_dfkd.models.generator import ConditionalBatchNorm2d, ConditionalGenerator, UnconditionalGenerator


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
