"""Every classifier of the registry matches the reference state-dict layout and logits of the DFKD literature."""
from __future__ import annotations

import json
import math
import zlib

import pytest
import torch

from cpsc_dfkd.errors import UserError
from cpsc_dfkd.models import create_model, list_models

from conftest import FIXTURES

REFERENCE = json.loads((FIXTURES / "reference_checkpoint_layouts.json").read_text())["models"]


def fill_by_reference_procedure(model: torch.nn.Module) -> None:
    """The deterministic fill described in the fixture's 'about' field."""
    filled = {}
    for name, tensor in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if name.endswith("num_batches_tracked"):
            value = torch.zeros_like(tensor)
        elif name.endswith("running_var"):
            value = torch.rand(tensor.shape, generator=g) + 0.5
        elif name.endswith("running_mean"):
            value = torch.randn(tensor.shape, generator=g) * 0.1
        elif tensor.dim() > 1:
            value = torch.randn(tensor.shape, generator=g) / math.sqrt(tensor[0].numel())
        else:
            value = torch.randn(tensor.shape, generator=g) * 0.1 + (1.0 if name.endswith("weight") else 0.0)
        filled[name] = value
    model.load_state_dict(filled)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_layout_matches_reference(name):
    spec = REFERENCE[name]
    model = create_model(name, spec["num_classes"], spec["in_channels"])
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in spec["state_dict"]]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_fill_reproduces_stored_logits(name):
    spec = REFERENCE[name]
    model = create_model(name, spec["num_classes"], spec["in_channels"])
    fill_by_reference_procedure(model)
    model.eval()
    x = torch.randn((2, spec["in_channels"], 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(spec["logits"]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_every_classifier_returns_penultimate_features(name):
    channels = 1 if name.startswith("lenet") else 3
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    logits, features = model(torch.randn(2, channels, 32, 32), return_features=True)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.feature_dim)
    torch.testing.assert_close(model.classify(features), logits)


def test_lenet_with_batchnorm_has_batchnorm_layers():
    model = create_model("lenet5_half_bn", 10, 1)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in create_model("lenet5", 10, 1).modules())


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(UserError, match="valid models are: .*resnet18"):
        create_model("resnet19", 10)


def test_resnet_accepts_64px_inputs():
    model = create_model("resnet18", 200, 3).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)
