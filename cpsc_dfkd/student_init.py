"""Start the student from the teacher's own weights: keep the teacher's strongest channels in every layer.

A narrower student (LeNet-5-half from LeNet-5, VGG at half width, ...) has the teacher's sequence of
layers with fewer channels in each. ``init_from_teacher`` copies, layer by layer, the teacher's weights
for the channels it keeps: the output channels whose BatchNorm scale |gamma| is largest (network
slimming, Liu et al. 2017), or whose filter has the largest L1 norm where no BatchNorm follows (Li et
al. 2017); a layer's input channels are the ones the layer before it kept. The last layer keeps every
class. The student then starts inside the teacher's solution, with filters shaped by the real data the
teacher saw, instead of from random weights. It is data-free: only the teacher's weights are read.

This is not part of CPSC-DFKD (the paper trains the student from scratch); it is the kit's option
``student.init=teacher``, measured against ``scratch`` in the README.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import UserError

_WEIGHTED = (nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _layers(model: nn.Module) -> list[nn.Module]:
    """The model's convolutions, linear layers and BatchNorms in the order they were registered."""
    return [m for m in model.modules() if isinstance(m, _WEIGHTED + _NORMS)]


def _check_same_sequence(teacher: nn.Module, student: nn.Module, teacher_layers: list[nn.Module],
                         student_layers: list[nn.Module], names: str) -> None:
    for model in (teacher, student):
        if not getattr(model, "plain_chain", False):
            raise UserError(f"student.init=teacher works for plain chains of layers (LeNet, VGG); "
                            f"{getattr(model, 'arch', type(model).__name__)} has skip connections, whose added "
                            "channels would not line up. Use --set student.init=scratch")
    kinds = [type(m).__name__ for m in teacher_layers], [type(m).__name__ for m in student_layers]
    if kinds[0] != kinds[1]:
        where = next((i for i, (a, b) in enumerate(zip(*kinds)) if a != b), min(map(len, kinds)))
        raise UserError(
            f"student.init=teacher needs a student that is a narrower copy of the teacher's layer sequence; {names} "
            f"differ ({len(kinds[0])} vs {len(kinds[1])} conv/linear/BN layers, first difference at layer {where}). "
            "Use --set student.init=scratch")
    for t, s in zip(teacher_layers, student_layers):
        if isinstance(t, nn.Conv2d) and (t.kernel_size, t.stride, t.padding, t.groups) != \
                (s.kernel_size, s.stride, s.padding, s.groups):
            raise UserError(f"student.init=teacher: a convolution of {names} differs in kernel, stride, padding or "
                            f"groups ({t} vs {s}); use --set student.init=scratch")
        if isinstance(t, nn.Conv2d) and t.groups != 1:
            raise UserError("student.init=teacher does not handle grouped convolutions; use --set student.init=scratch")


def _importance(layers: list[nn.Module], index: int) -> torch.Tensor:
    """How much each output channel of ``layers[index]`` matters: |gamma| of the BatchNorm right after it,
    else the L1 norm of its filters."""
    layer = layers[index]
    following = layers[index + 1] if index + 1 < len(layers) else None
    if isinstance(following, _NORMS) and following.weight is not None:
        return following.weight.detach().abs()
    return layer.weight.detach().abs().flatten(1).sum(1)


def _input_rows(kept: torch.Tensor, teacher_in: int, student_in: int, previous_out: int) -> torch.Tensor:
    """The teacher's input units a layer keeps, given the channels the layer before kept. A linear layer
    after a flattened feature map sees every channel ``teacher_in / previous_out`` times in a row."""
    if teacher_in == previous_out:
        return kept
    per_channel, remainder = divmod(teacher_in, previous_out)
    if remainder or student_in != kept.numel() * per_channel:
        raise UserError(f"student.init=teacher: cannot map {teacher_in} teacher inputs onto {student_in} student "
                        f"inputs after a layer with {previous_out} channels; use --set student.init=scratch")
    offsets = torch.arange(per_channel)
    return (kept[:, None] * per_channel + offsets[None, :]).flatten()


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> dict[str, list[int]]:
    """Copy the teacher's strongest channels into ``student`` in place; returns the teacher's channels that
    each layer kept (keyed by the layer's index among the conv, linear and BatchNorm layers)."""
    names = f"{getattr(teacher, 'arch', type(teacher).__name__)} and {getattr(student, 'arch', type(student).__name__)}"
    teacher_layers, student_layers = _layers(teacher), _layers(student)
    _check_same_sequence(teacher, student, teacher_layers, student_layers, names)
    first = teacher_layers[0]
    kept = torch.arange(first.in_channels if isinstance(first, nn.Conv2d) else first.in_features)
    previous_out = kept.numel()
    report: dict[str, list[int]] = {}
    for index, (t, s) in enumerate(zip(teacher_layers, student_layers)):
        if isinstance(t, _NORMS):
            if t.num_features != previous_out or s.num_features != kept.numel():
                raise UserError(f"student.init=teacher: BatchNorm sizes of {names} do not follow their layers; "
                                "use --set student.init=scratch")
            for name in ("weight", "bias", "running_mean", "running_var"):
                source, target = getattr(t, name), getattr(s, name)
                if source is not None and target is not None:
                    target.copy_(source[kept.to(source.device)])
            report[str(index)] = kept.tolist()
            continue
        t_out, s_out = t.weight.shape[0], s.weight.shape[0]
        rows = _input_rows(kept, t.weight.shape[1], s.weight.shape[1], previous_out)
        if s_out > t_out or rows.numel() != s.weight.shape[1]:
            raise UserError(f"student.init=teacher needs a student no wider than the teacher in every layer; layer "
                            f"{index} of {names} has {tuple(s.weight.shape)} against {tuple(t.weight.shape)}; "
                            "use --set student.init=scratch")
        chosen = torch.topk(_importance(teacher_layers, index).cpu(), s_out).indices.sort().values
        device = t.weight.device
        s.weight.copy_(t.weight[chosen.to(device)][:, rows.to(device)])
        if s.bias is not None and t.bias is not None:
            s.bias.copy_(t.bias[chosen.to(device)])
        report[str(index)] = chosen.tolist()
        kept, previous_out = chosen, t_out
    return report


def matched_batchnorms(teacher: nn.Module, student: nn.Module, kept: dict[str, list[int]]
                       ) -> list[tuple[nn.Module, nn.Module, list[int]]]:
    """(teacher BN, student BN, the teacher's channels the student's BN stands for), for each BatchNorm of a
    student made by ``init_from_teacher``: where the two can be compared channel for channel."""
    teacher_layers, student_layers = _layers(teacher), _layers(student)
    return [(layer, student_layers[i], kept[str(i)])
            for i, layer in enumerate(teacher_layers) if isinstance(layer, _NORMS)]
