"""The LeNets' CPU shortcuts (models/cpu_layers.py) compute what PyTorch's own layers compute."""
import pytest
import torch
from torch import nn

from cpsc_dfkd.models import create_model
from cpsc_dfkd.models.cpu_layers import InputConv2d, MaxPool2x2


def _relu_maps(*shape, memory_format=torch.contiguous_format):
    # After a ReLU, as in the LeNets: many windows hold ties at zero, which the gradient must treat as nn does.
    return torch.relu(torch.randn(*shape)).contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_max_pool_without_gradient_is_bit_for_bit_nn_max_pool(memory_format):
    maps = _relu_maps(8, 6, 28, 28, memory_format=memory_format)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(maps), nn.MaxPool2d(2)(maps))
    nan_map = maps.clone()
    nan_map[0, 0, 3, 5] = float("nan")
    with torch.no_grad():
        assert torch.isnan(MaxPool2x2()(nan_map)[0, 0, 1, 2])


def test_max_pool_with_gradient_matches_nn_max_pool():
    maps = _relu_maps(4, 3, 10, 10)
    ours, theirs = maps.clone().requires_grad_(), maps.clone().requires_grad_()
    upstream = torch.randn(4, 3, 5, 5)
    MaxPool2x2()(ours).backward(upstream)
    nn.MaxPool2d(2)(theirs).backward(upstream)
    assert torch.equal(ours.grad, theirs.grad)


def test_max_pool_of_odd_maps_floors_like_nn_max_pool():
    maps = _relu_maps(2, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(maps), nn.MaxPool2d(2)(maps))
    assert MaxPool2x2()(maps).shape == (2, 3, 3, 4)


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("train_weights", [True, False])
def test_input_conv_gradients_match_nn_conv(padding, train_weights):
    torch.manual_seed(0)
    theirs = nn.Conv2d(1, 6, 5, padding=padding)
    ours = InputConv2d(1, 6, 5, padding=padding)
    ours.load_state_dict(theirs.state_dict())
    for conv in (ours, theirs):
        conv.requires_grad_(train_weights)
    images = torch.randn(16, 1, 32, 32)
    x_ours, x_theirs = images.clone().requires_grad_(), images.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert torch.equal(out_ours, out_theirs)
    upstream = torch.randn_like(out_theirs)
    out_ours.backward(upstream)
    out_theirs.backward(upstream)
    # The input gradient is summed in another order; weight and bias gradients are PyTorch's own.
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-5, atol=1e-5)
    if train_weights:
        assert torch.equal(ours.weight.grad, theirs.weight.grad)
        assert torch.equal(ours.bias.grad, theirs.bias.grad)


def test_input_conv_falls_back_where_the_shortcut_does_not_apply():
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 4, 3, stride=2, bias=False)
    ours = InputConv2d(3, 4, 3, stride=2, bias=False)
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(4, 3, 16, 16, requires_grad=True)
    assert not ours._shortcut_applies(images)
    assert ours(images).grad_fn.name() == theirs(images).grad_fn.name()
    as_double = images.double().detach().requires_grad_()
    assert not ours.double()._shortcut_applies(as_double)  # float64 (e.g. for gradcheck) takes nn's path
    assert ours(as_double).grad_fn.name() == theirs.double()(as_double).grad_fn.name()


def test_lenets_keep_their_state_dict_layout_and_outputs():
    torch.manual_seed(0)
    model = create_model("lenet5_half_bn", 10, 1).eval()
    assert isinstance(model.features[0], InputConv2d) and isinstance(model.features[3], MaxPool2x2)
    plain = create_model("lenet5_half_bn", 10, 1).eval()
    plain.features[0] = nn.Conv2d(1, 3, 5)
    plain.features[3], plain.features[7] = nn.MaxPool2d(2), nn.MaxPool2d(2)
    plain.load_state_dict(model.state_dict())
    assert list(plain.state_dict()) == list(model.state_dict())
    images = torch.randn(8, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))
    # The attention points (after each pooling) are still found.
    assert model.attention_points() == [model.features[3], model.features[7]]
