"""Every loss term of CPSC-DFKD and of the baselines, each a small function.

Sign conventions live in ``distill.py``: these functions return the quantity itself (a distance,
an entropy, ...), and the generator and student steps add or subtract it with its weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), batch mean, scaled by T^2 as in Hinton et al."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def l1_logit_distance(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """DFAD's distance: mean absolute difference of logits."""
    return (teacher_logits - student_logits).abs().mean()


def teacher_student_distance(teacher_logits: torch.Tensor, student_logits: torch.Tensor, kind: str = "kl",
                             temperature: float = 1.0) -> torch.Tensor:
    if kind == "kl":
        return kl_divergence(teacher_logits, student_logits, temperature)
    if kind == "l1":
        return l1_logit_distance(teacher_logits, student_logits)
    raise ValueError(f"unknown distance {kind!r}; use 'kl' or 'l1'")


def ikd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, log: bool = False) -> torch.Tensor:
    """IKD: mean squared error between logits; ``log=True`` gives the CIFAR-10 reference's log-MSE."""
    mse = F.mse_loss(student_logits, teacher_logits)
    return torch.log(mse + 1e-8) if log else mse


def pseudo_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, on_softmax: bool = False) -> torch.Tensor:
    """Cross-entropy against the generator's labels, on logits.

    ``on_softmax=True`` reproduces the reference code's defect (softmax applied twice).
    """
    if on_softmax:
        logits = F.softmax(logits, dim=1)
    return F.cross_entropy(logits, labels)


def feature_share_masks(members: int, dim: int, share: float, seed: int) -> torch.Tensor:
    """One fixed random 0/1 mask per generator over the teacher's ``dim`` penultimate features, each keeping
    ``round(share * dim)`` of them (at least one): rows ``[members, dim]``, drawn from ``seed`` alone."""
    rng = torch.Generator().manual_seed(seed)
    kept = max(1, round(share * dim))
    return torch.stack([(torch.randperm(dim, generator=rng) < kept).float() for _ in range(members)])


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) over ``features`` of shape [batch, views, dim] (L2-normalised here).

    Every view of every sample is an anchor; its positives are all other views with the same label.
    """
    if features.dim() != 3:
        raise ValueError("features must have shape [batch, views, dim]")
    batch, views, _ = features.shape
    flat = F.normalize(features.float(), dim=2).transpose(0, 1).reshape(batch * views, -1)
    labels = labels.repeat(views)
    similarity = flat @ flat.T / temperature
    self_mask = torch.eye(batch * views, dtype=torch.bool, device=flat.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    positive_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    return -(positive_log_prob / positives.sum(1).clamp(min=1)).mean()


def mode_seeking_loss(images: torch.Tensor, noise: torch.Tensor, period: int, eps: float = 1e-5) -> torch.Tensor:
    """Mode seeking (Mao et al. 2019): 1 / (image distance / noise distance) over pairs made for the same class.

    Rows ``i`` and ``i + period`` of a batch share a label (labels cycle with the number of classes), so
    they are the pairs. The loss is small when different noise gives different images, i.e. when the
    generator does not collapse a class onto one image.
    """
    if images.shape[0] <= period:
        raise ValueError(f"mode seeking needs more than {period} rows per batch (one pair per class)")
    image_gap = (images[period:] - images[:-period]).abs().flatten(1).mean(1)
    noise_gap = (noise[period:] - noise[:-period]).abs().mean(1)
    return 1.0 / ((image_gap / noise_gap).mean() + eps)


def one_hot_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL: the teacher should be confident, i.e. agree with its own argmax."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(1))


def activation_loss(teacher_features: torch.Tensor) -> torch.Tensor:
    """DAFL: reward strong penultimate activations (returns the negative mean magnitude)."""
    return -teacher_features.abs().mean()


def information_entropy_loss(teacher_logits: torch.Tensor) -> torch.Tensor:
    """DAFL: the negative entropy of the batch's mean prediction; minimising it balances the classes."""
    mean_prob = F.softmax(teacher_logits, dim=1).mean(0)
    return (mean_prob * torch.log(mean_prob + 1e-8)).sum()


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """DeepInversion's smoothness prior: mean squared difference of neighbouring pixels."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def attention_map(activation: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: channel mean of squares, flattened and L2-normalised."""
    return F.normalize(activation.float().pow(2).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_activations: list[torch.Tensor], teacher_activations: list[torch.Tensor]) -> torch.Tensor:
    """ZSKT: match the student's attention maps to the teacher's at each stage."""
    if len(student_activations) != len(teacher_activations):
        raise ValueError("attention transfer needs as many student stages as teacher stages")
    terms = []
    for s, t in zip(student_activations, teacher_activations):
        if s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        terms.append((attention_map(s) - attention_map(t)).pow(2).mean())
    return torch.stack(terms).sum()


def channel_hint_loss(student_activations: list[torch.Tensor], teacher_activations: list[torch.Tensor],
                      kept_channels: list[torch.Tensor] | list[list[int]]) -> torch.Tensor:
    """Mean over layers of the MSE between each student activation and the teacher's activation at the
    channels that student layer was copied from (``student.init=teacher``): the student is kept a pruned
    copy of the teacher inside, not only at the logits."""
    terms = []
    for s, t, kept in zip(student_activations, teacher_activations, kept_channels, strict=True):
        terms.append(F.mse_loss(s.float(), t[:, kept].float()))
    return torch.stack(terms).mean()


class BatchNormStatistics:
    """DeepInversion's prior: forward hooks on the teacher's BatchNorm layers compare each batch's
    per-channel mean and variance with the running statistics learnt on real data.

    Statistics are only recorded while ``active`` is True (the generator step), so the student
    step's teacher forward pays nothing.

    ``normalized=True`` measures the gaps in units of the running statistics (mean gap over the
    running std, variance ratio minus one). DeepInversion's raw form depends on the teacher's
    activation scale: a LeNet whose BN inputs have variance ~30 gives a loss of ~140 on *real*
    batches, which then drowns every other generator term; the normalised form is ~1 there.

    ``first_layer_weight`` multiplies the first BN layer's term (DeepInversion uses 10): the first
    layer sees the pixels, so its statistics say most about what natural images look like.
    """

    def __init__(self, model: nn.Module, normalized: bool = False, first_layer_weight: float = 1.0):
        self.active = False
        self.normalized = normalized
        self._terms: list[torch.Tensor] = []
        layers = [m for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self._weights = {id(m): (first_layer_weight if i == 0 else 1.0) for i, m in enumerate(layers)}
        self._handles = [module.register_forward_hook(self._hook) for module in layers]

    @property
    def num_layers(self) -> int:
        return len(self._handles)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if self.normalized:
            running_std = torch.sqrt(module.running_var + module.eps)
            term = torch.norm((mean - module.running_mean) / running_std, 2) + \
                torch.norm(var / (module.running_var + module.eps) - 1, 2)
        else:
            term = torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2)
        self._terms.append(self._weights[id(module)] * term)

    def loss(self) -> torch.Tensor:
        """Sum over layers for the forward passes since the last call; clears the record."""
        if not self._terms:
            raise RuntimeError("no BatchNorm statistics recorded: activate the hooks and run the teacher first")
        total = torch.stack(self._terms).sum()
        self._terms = []
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class ActivationTap:
    """Forward hooks that keep the outputs of chosen modules (for attention transfer), while ``active``."""

    def __init__(self, modules: list[nn.Module]):
        self.active = False
        self.outputs: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self.active:
            self.outputs.append(output)

    def take(self) -> list[torch.Tensor]:
        outputs, self.outputs = self.outputs, []
        return outputs

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
