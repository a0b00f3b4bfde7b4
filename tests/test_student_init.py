"""student.init=teacher: the student starts from the teacher's strongest channels, layer by layer."""
import pytest
import torch
from torch import nn

from cpsc_dfkd.config import resolve
from cpsc_dfkd.distill import Distiller
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.models import create_model
from cpsc_dfkd.student_init import init_from_teacher


def _teacher_with_distinct_gammas() -> nn.Module:
    torch.manual_seed(0)
    teacher = create_model("lenet5_bn", 10, 1)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.randn(module.num_features)
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return teacher


def test_keeps_the_channels_with_the_largest_batchnorm_scale_and_their_inputs():
    teacher = _teacher_with_distinct_gammas()
    student = create_model("lenet5_half_bn", 10, 1)
    init_from_teacher(student, teacher)
    t_conv1, t_bn1, t_conv2, t_bn2 = teacher.features[0], teacher.features[1], teacher.features[4], teacher.features[5]
    s_conv1, s_bn1, s_conv2 = student.features[0], student.features[1], student.features[4]
    kept1 = t_bn1.weight.abs().topk(3).indices.sort().values
    kept2 = t_bn2.weight.abs().topk(8).indices.sort().values
    assert torch.equal(s_conv1.weight, t_conv1.weight[kept1])
    assert torch.equal(s_conv1.bias, t_conv1.bias[kept1])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(s_bn1, name), getattr(t_bn1, name)[kept1])
    assert torch.equal(s_conv2.weight, t_conv2.weight[kept2][:, kept1])


def test_the_last_layer_keeps_every_class_and_fully_connected_layers_use_the_filter_norm():
    teacher = _teacher_with_distinct_gammas()
    student = create_model("lenet5_half_bn", 10, 1)
    kept = init_from_teacher(student, teacher)
    fc1, fc2 = teacher.fc[0], teacher.fc[2]
    kept_fc1 = fc1.weight.abs().sum(1).topk(42).indices.sort().values
    assert kept[list(kept)[-2]] == kept_fc1.tolist()
    assert kept[list(kept)[-1]] == list(range(10))
    assert torch.equal(student.fc[2].weight, fc2.weight[:, kept_fc1])


def test_a_student_as_wide_as_the_teacher_becomes_the_teacher():
    teacher = _teacher_with_distinct_gammas().eval()
    student = create_model("lenet5_bn", 10, 1).eval()
    init_from_teacher(student, teacher)
    x = torch.randn(8, 1, 32, 32)
    torch.testing.assert_close(student(x), teacher(x))


class _Chain(nn.Module):
    """conv -> flatten of a 2x2 map -> linear: a linear layer that sees each channel 4 times in a row."""
    plain_chain = True

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.fc = nn.Linear(width * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_linear_layer_after_a_flattened_map_keeps_every_position_of_the_kept_channels():
    torch.manual_seed(0)
    teacher, student = _Chain(4), _Chain(2)
    kept = init_from_teacher(student, teacher)["0"]
    rows = [c * 4 + p for c in kept for p in range(4)]
    assert torch.equal(student.fc.weight, teacher.fc.weight[:, rows])
    x = torch.randn(2, 1, 4, 4)
    expected = teacher.fc.weight[:, rows] @ torch.relu(teacher.conv(x))[:, kept].flatten(1).T
    torch.testing.assert_close(student(x), expected.T + teacher.fc.bias)


@pytest.mark.parametrize("teacher_arch, student_arch, message", [
    ("resnet34", "resnet18", "skip connections"),
    ("wrn_40_2", "wrn_40_1", "skip connections"),
    ("lenet5", "lenet5_half_bn", "narrower copy of the teacher's layer sequence"),
    ("lenet5_half_bn", "lenet5_bn", "no wider than the teacher"),
])
def test_students_that_are_not_narrower_copies_are_refused_by_name(teacher_arch, student_arch, message):
    with pytest.raises(UserError, match=message) as error:
        init_from_teacher(create_model(student_arch, 10, 3), create_model(teacher_arch, 10, 3))
    assert "student.init=scratch" in str(error.value)


def test_the_distiller_starts_the_student_from_the_teacher_only_when_asked():
    teacher = _teacher_with_distinct_gammas()
    kept1 = teacher.features[1].weight.abs().topk(3).indices.sort().values
    overrides = ["data.name=fashion-mnist", "distill.batch_size=8", "generator.nz=8", "generator.ngf=4"]
    pruned = Distiller(resolve(None, overrides + ["student.init=teacher"]), teacher)
    assert torch.equal(pruned.student.features[0].weight, teacher.features[0].weight[kept1])
    scratch = Distiller(resolve(None, overrides), teacher)
    assert not torch.equal(scratch.student.features[0].weight, teacher.features[0].weight[kept1])


def test_an_unknown_init_is_refused_with_the_choices():
    with pytest.raises(UserError, match="scratch"):
        resolve(None, ["student.init=imagenet"])


def test_the_channel_hint_is_zero_for_a_full_width_copy_and_positive_for_a_pruned_one():
    from cpsc_dfkd.losses import ActivationTap, channel_hint_loss
    from cpsc_dfkd.student_init import matched_batchnorms

    teacher = _teacher_with_distinct_gammas().eval()
    x = torch.randn(16, 1, 32, 32)
    for student_arch, expect_zero in (("lenet5_bn", True), ("lenet5_half_bn", False)):
        student = create_model(student_arch, 10, 1).eval()
        pairs = matched_batchnorms(teacher, student, init_from_teacher(student, teacher))
        assert [len(kept) for _, _, kept in pairs] == ([6, 16, 120] if expect_zero else [3, 8, 60])
        teacher_tap, student_tap = ActivationTap([t for t, _, _ in pairs]), ActivationTap([s for _, s, _ in pairs])
        teacher_tap.active = student_tap.active = True
        teacher(x), student(x)
        loss = channel_hint_loss(student_tap.take(), teacher_tap.take(), [kept for _, _, kept in pairs])
        assert (loss.item() == 0) if expect_zero else (loss.item() > 0)


def test_the_hint_needs_a_student_made_from_the_teacher():
    overrides = ["data.name=fashion-mnist", "distill.batch_size=8", "generator.nz=8", "generator.ngf=4", "loss.hint=1"]
    with pytest.raises(UserError, match="student.init=teacher"):
        Distiller(resolve(None, overrides), _teacher_with_distinct_gammas())
    distiller = Distiller(resolve(None, overrides + ["student.init=teacher"]), _teacher_with_distinct_gammas())
    assert "s_hint" in distiller.student_step()
