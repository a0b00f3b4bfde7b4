"""The distillation loop: one iteration = ``g_steps`` generator steps, then ``s_steps`` student steps.

Generator step (the generator and, if present, the student->teacher projection head learn)::

    x = G(z, y)                                      y: the pseudo-label each image is made for
    loss_G = - adv * D(t, s)                         seek samples where student and teacher disagree
             - adv * ikd * MSE(s, t)                 (IKD; adv = 1 is the paper's loss)
             + bn  * sum_l |mu_l - mu_l^run| + |var_l - var_l^run|   teacher BN statistics prior
             + scl * SupCon([head(f_s), f_t], y)     pseudo-supervised contrast
             + ce  * CE(t, y)                        pseudo cross-entropy on the teacher
             (+ DAFL / DeepInversion terms for the baselines)

Student step (only the student learns)::

    loss_S = kd * D(t, s) + student_ikd * MSE(s, t) + student_ce * CE(s, y) (+ attention transfer for ZSKT)
             + hint * MSE(student BN outputs, teacher BN outputs at the channels they were copied from)

(``student_ikd`` and ``student_ce`` default to ``ikd`` and ``ce``; the hint needs ``student.init=teacher``,
see student_init.py.)

D is KL(t || s) (or DFAD's L1 on logits). Fixes over the reference code (each an option):
Adam's state persists across generator steps, cross-entropy takes logits, the projection head is
trained, and the student's BatchNorm statistics are not updated by the generator step.

The Distiller knows nothing about files or screens: observers (``Callback``) receive its events.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .config import Config, to_dict
from .data import apply_affine, apply_crop_flip, dataset_info, denormalise, draw_affine, draw_crop_flip
from .errors import UserError
from .memory import SyntheticMemory
from .losses import (
    ActivationTap,
    BatchNormStatistics,
    activation_loss,
    attention_transfer_loss,
    channel_hint_loss,
    feature_share_masks,
    ikd_loss,
    information_entropy_loss,
    mode_seeking_loss,
    one_hot_loss,
    pseudo_cross_entropy,
    supervised_contrastive_loss,
    teacher_student_distance,
    total_variation_loss,
)
from .models import create_generator, create_model
from .runs import check_state_dict, load_checkpoint, save_checkpoint
from .runtime import (
    capture_rng_state,
    lr_at,
    restore_rng_state,
    seed_everything,
    select_device,
    select_precision,
    set_lr,
)
from .student_init import init_from_teacher, matched_batchnorms
from .teacher import evaluate

CHECKPOINT_FORMAT = 1
DISPLAY_SEED_OFFSET = 10_007  # the fixed noise used for sample grids is independent of training noise


class Callback:
    """Observer of a Distiller. Override what you need; every method is a no-op by default."""

    def on_run_start(self, distiller: "Distiller") -> None: ...

    def on_iteration_end(self, distiller: "Distiller") -> None:
        """After every iteration (cheap: no payload). Pause or stop a run from here."""

    def on_log(self, distiller: "Distiller", record: dict[str, float]) -> None:
        """Every ``log_every`` iterations: losses averaged over the window, learning rates, throughput."""

    def on_evaluation(self, distiller: "Distiller", record: dict[str, float]) -> None: ...

    def on_samples(self, distiller: "Distiller", images: torch.Tensor, labels: torch.Tensor) -> None:
        """Per-class synthetic images in [0, 1], grouped by class (``labels`` sorted)."""

    def on_checkpoint(self, distiller: "Distiller", path: Path) -> None: ...

    def on_run_end(self, distiller: "Distiller", summary: dict[str, Any]) -> None: ...


class NonFiniteLoss(UserError):
    """A loss became NaN or infinite."""


class Distiller:
    """Owns the student, the generator, their optimisers and the loop; emits events to callbacks."""

    def __init__(self, config: Config, teacher: nn.Module, test_set: torch.utils.data.Dataset | None = None,
                 callbacks: Iterable[Callback] = (), checkpoint_dir: Path | None = None,
                 teacher_acc: float | None = None):
        self.config = config
        self.info = dataset_info(config.data.name)
        self.device = select_device(config.device)
        self.precision = select_precision(config.amp, self.device)
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        if config.distill.batch_size % self.world_size:
            raise UserError(f"distill.batch_size ({config.distill.batch_size}) must be divisible by the number "
                            f"of processes ({self.world_size}): each rank makes an equal share of the global batch")
        self.local_batch = config.distill.batch_size // self.world_size
        seed_everything(config.seed)
        self.callbacks = list(callbacks)
        self.test_set = test_set
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.teacher_acc = teacher_acc
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

        self.teacher = teacher.to(self.device, memory_format=memory_format).eval().requires_grad_(False)
        self.student = create_model(config.student.arch, self.info.num_classes, self.info.channels)
        self.hint_pairs: list[tuple[nn.Module, nn.Module, list[int]]] = []
        if config.student.init == "teacher":
            kept = init_from_teacher(self.student, self.teacher)
            self.hint_pairs = matched_batchnorms(self.teacher, self.student, kept)
        if config.loss.hint > 0 and not self.hint_pairs:
            raise UserError("loss.hint compares student and teacher channel by channel, which needs "
                            "student.init=teacher and BatchNorm layers; add --set student.init=teacher or set "
                            "loss.hint=0")
        self.generator = generator_for(config)
        # SupCon compares student and teacher features; a linear head maps the student's to the teacher's size.
        t_dim, s_dim = self.teacher.feature_dim, self.student.feature_dim
        self.projection_head = nn.Linear(s_dim, t_dim) if s_dim != t_dim else nn.Identity()
        if config.sync_batchnorm and self.world_size > 1:
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.generator = nn.SyncBatchNorm.convert_sync_batchnorm(self.generator)
        for module in (self.student, self.generator, self.projection_head):
            module.to(self.device, memory_format=memory_format)
        self.projection_head.requires_grad_(config.distill.train_projection_head)

        self.student_optimizer = torch.optim.SGD(
            self.student.parameters(), lr=config.distill.student_lr, momentum=config.distill.student_momentum,
            weight_decay=config.distill.student_weight_decay, nesterov=config.distill.student_nesterov,
            fused=self._fused_optimizers)
        self.generator_optimizer = self._new_generator_optimizer()
        self.student_scaler = self.precision.make_scaler()
        self.generator_scaler = self.precision.make_scaler()

        # Under torchrun, DDP averages the gradients of what each rank learns; single runs use the modules as is.
        self.student_train = self._ddp(self.student)
        self.generator_train = self._ddp(self.generator)
        self.head_train = self._ddp(self.projection_head)
        self.student_forward = torch.compile(self.student) if config.compile else self.student
        self.teacher_forward = torch.compile(self.teacher) if config.compile else self.teacher

        loss = config.loss
        self.bn_statistics = (BatchNormStatistics(self.teacher, loss.bn_normalized, loss.bn_first_layer_weight)
                              if loss.bn > 0 else None)
        if self.bn_statistics is not None and self.bn_statistics.num_layers == 0:
            raise UserError(f"loss.bn > 0 needs a teacher with BatchNorm layers, and {config.teacher.arch} has none; "
                            "use a *_bn teacher or --set loss.bn=0")
        self.ce_feature_masks = None  # each generator's share of the teacher's features for its pseudo CE
        if loss.ce_feature_share < 1:
            if not hasattr(self.teacher, "classify"):
                raise UserError(f"loss.ce_feature_share < 1 needs a teacher with a classify(features) method, and "
                                f"{config.teacher.arch} has none; use a kit model or --set loss.ce_feature_share=1")
            self.ce_feature_masks = feature_share_masks(config.generator.members, self.teacher.feature_dim,
                                                        loss.ce_feature_share, config.seed).to(self.device)
        self.teacher_hint_taps = self.student_hint_taps = None
        if loss.hint > 0:
            self.teacher_hint_taps = ActivationTap([t for t, _, _ in self.hint_pairs])
            self.student_hint_taps = ActivationTap([s for _, s, _ in self.hint_pairs])
            self.hint_channels = [torch.tensor(kept, device=self.device) for _, _, kept in self.hint_pairs]
        self.teacher_taps = self.student_taps = None
        if loss.attention > 0:
            if not hasattr(self.teacher, "attention_points"):
                raise UserError("loss.attention needs a teacher that names its attention points")
            self.teacher_taps = ActivationTap(self.teacher.attention_points())
            self.student_taps = ActivationTap(self.student.attention_points())

        # Noise comes from its own generator, identical on every rank: each rank takes its slice of the
        # global batch, so N processes see exactly the images one process would.
        self.noise_rng = torch.Generator(device="cpu").manual_seed(config.seed)
        self.memory = None
        if config.distill.memory_batches > 0:
            shape = (self.info.channels, self.info.image_size, self.info.image_size)
            self.memory = SyntheticMemory(config.distill.memory_batches, self.local_batch, shape, self.device)
        self.iteration = 0
        self.best_student_acc = -1.0
        self.last_student_acc: float | None = None
        self.lr_scale = 1.0
        self.elapsed_before_resume = 0.0
        self.images_seen = 0
        self.stop_requested = False
        self._fit_start: float | None = None
        self._window: dict[str, torch.Tensor] = {}
        self._window_steps = 0
        self._window_start = time.perf_counter()
        self._first_bad_iteration: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------- set-up helpers
    def _ddp(self, module: nn.Module) -> nn.Module:
        if self.world_size == 1 or not any(p.requires_grad for p in module.parameters()):
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def _new_generator_optimizer(self) -> torch.optim.Optimizer:
        g = self.config.generator
        # The class embeddings get a group of their own only when their rate differs: with the default the
        # optimiser (and so every checkpoint's layout) is the one of runs made before the option existed.
        embeddings = self.generator.class_embedding_parameters() if g.embedding_lr_scale != 1 else []
        embedding_ids = {id(p) for p in embeddings}
        groups = [{"params": [p for p in self.generator.parameters() if id(p) not in embedding_ids]}]
        if embeddings:
            groups.append({"params": embeddings, "lr_scale": g.embedding_lr_scale})
        head_params = [p for p in self.projection_head.parameters() if p.requires_grad]
        if head_params:
            groups.append({"params": head_params})
        return torch.optim.Adam(groups, lr=g.lr, betas=(g.beta1, g.beta2), fused=self._fused_optimizers)

    @property
    def _fused_optimizers(self) -> bool:
        """One kernel per optimiser step instead of several per parameter: the eight generators' Adam step
        takes 2 ms instead of 16 on two CPU threads, the same update up to the order of float operations."""
        return self.device.type in ("cpu", "cuda")

    # ----------------------------------------------------------------------------------------- sampling
    def _share(self, global_tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor made for the global batch."""
        rows = global_tensor[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
        return rows.to(self.device, non_blocking=True)

    def sample_labels(self) -> torch.Tensor:
        """Balanced labels: row i of every global batch is made for class i % num_classes."""
        return self._share(torch.arange(self.config.distill.batch_size) % self.info.num_classes)

    def sample_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch: noise z ~ N(0, I) and its labels y."""
        z = torch.randn(self.config.distill.batch_size, self.config.generator.nz, generator=self.noise_rng)
        return self._share(z), self.sample_labels()

    @torch.no_grad()
    def synthetic_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images for a student step: from the memory of past generator batches if on, else freshly made."""
        if self.memory is not None and self.memory.filled:
            slots = torch.randint(0, self.memory.filled, (self.config.distill.batch_size,), generator=self.noise_rng)
            return self.memory.sample(self._share(slots)), self.sample_labels()
        z, y = self.sample_noise()
        with self.precision.autocast():
            return self.generator(z, y), y

    def augment(self, images: torch.Tensor, padding: int | None = None, flips: bool = True) -> torch.Tensor:
        """Random crops (``padding`` pixels, default the data set's) and, if ``flips`` and the data set allows
        them, flips, for the student step and the generator's jitter. They are drawn for the whole global batch
        from the noise stream (identical on every rank, checkpointed); each rank applies its own rows."""
        padding = self.info.padding_or_default(padding)
        draws = draw_crop_flip(self.config.distill.batch_size, padding, flips and self.info.flip, self.noise_rng)
        mine = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        return apply_crop_flip(images, padding, *(d[mine] for d in draws), fill=self.info.black)

    def warp(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image stretches and turns (``distill.affine``), drawn for the global batch like the crops."""
        d = self.config.distill
        theta, moved = draw_affine(d.batch_size, d.affine, d.affine_scale, d.affine_degrees, self.noise_rng)
        rows = self._share(moved).nonzero().squeeze(1)  # only these are resampled: the rest stay exact
        return images.index_copy(0, rows, apply_affine(images[rows], self._share(theta)[rows], fill=self.info.black))

    def mix(self, images: torch.Tensor) -> torch.Tensor:
        """Mixup for the student step: a ``distill.mixup`` share of the rows becomes
        ``w * image + (1 - w) * partner`` with ``w ~ U(0, 1)`` and a random partner from the same rank's
        rows. Drawn for the global batch from the noise stream, like the crops; each rank applies its rows."""
        n = self.config.distill.batch_size
        mixed = torch.rand(n, generator=self.noise_rng) < self.config.distill.mixup
        weight = torch.rand(n, generator=self.noise_rng)
        partner = torch.randperm(self.local_batch, generator=self.noise_rng)
        w = self._share(torch.where(mixed, weight, 1.0)).to(images.dtype).view(-1, *([1] * (images.dim() - 1)))
        return w * images + (1 - w) * images[partner.to(images.device)]

    def _pseudo_labels(self, y: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The conditional generator's own labels; an unconditional one borrows the teacher's argmax."""
        return y if self.generator.conditional else teacher_logits.detach().argmax(1)

    def _ce_logits(self, t_logits: torch.Tensor, t_features: torch.Tensor, z: torch.Tensor,
                   y: torch.Tensor | None) -> torch.Tensor:
        """The teacher logits the generators' pseudo CE reads: from all of the teacher's features, or with
        ``loss.ce_feature_share`` < 1 from the share that belongs to the generator that made each row."""
        if self.ce_feature_masks is None:
            return t_logits
        # One generator owns every row (one mask); an ensemble says which member made each row.
        owner = self.generator.assign(z.shape[0], y).to(self.device) if len(self.ce_feature_masks) > 1 else 0
        shared = t_features.float() * self.ce_feature_masks[owner] / self.config.loss.ce_feature_share
        return self.teacher.classify(shared)

    # -------------------------------------------------------------------------------------------- steps
    def generator_step(self) -> dict[str, torch.Tensor]:
        cfg, w = self.config, self.config.loss
        if cfg.generator.reset_optimizer_each_step:  # reference behaviour, kept for measurement
            self.generator_optimizer = self._new_generator_optimizer()
            self._apply_learning_rates()
        self.generator.train()
        self.student.train(cfg.distill.student_bn_in_g_step == "train")
        self.student.requires_grad_(False)  # gradients flow through the student to x, not into its weights
        z, y = self.sample_noise()
        if self.bn_statistics is not None:
            self.bn_statistics.active = True
        with self.precision.autocast():
            images = self.generator_train(z, y)
            if self.memory is not None:
                self.memory.add(images)
            seen = self.augment(images) if cfg.generator.jitter else images
            t_logits, t_features = self.teacher_forward(seen, return_features=True)
            s_logits, s_features = self.student_forward(seen, return_features=True)
        if self.bn_statistics is not None:
            self.bn_statistics.active = False
        self.student.requires_grad_(True)
        t_logits, s_logits = t_logits.float(), s_logits.float()
        labels = self._pseudo_labels(y, t_logits)

        terms: dict[str, torch.Tensor] = {}
        if w.adv:
            terms["g_adv"] = -w.adv * teacher_student_distance(t_logits, s_logits, w.distance, w.kd_temperature)
        if w.ikd and w.adv:  # as in the reference, disagreement is sought through the student's logits only
            terms["g_ikd"] = -w.adv * w.ikd * ikd_loss(s_logits, t_logits.detach(), log=w.ikd_log)
        if w.bn:
            terms["g_bn"] = w.bn * self.bn_statistics.loss()
        if w.scl:
            views = torch.stack([F.normalize(self.head_train(s_features.float()), dim=1),
                                 F.normalize(t_features.float(), dim=1)], dim=1)
            terms["g_scl"] = w.scl * supervised_contrastive_loss(views, labels, w.scl_temperature)
        if w.ce:
            terms["g_ce"] = w.ce * pseudo_cross_entropy(self._ce_logits(t_logits, t_features, z, y), labels,
                                                        on_softmax=w.ce_on_softmax)
        if w.diversity:
            terms["g_diversity"] = w.diversity * mode_seeking_loss(images.float(), z, self.info.num_classes)
        if w.one_hot:
            terms["g_one_hot"] = w.one_hot * one_hot_loss(t_logits)
        if w.activation:
            terms["g_activation"] = w.activation * activation_loss(t_features.float())
        if w.info_entropy:
            terms["g_info_entropy"] = w.info_entropy * information_entropy_loss(t_logits)
        if w.tv:
            terms["g_tv"] = w.tv * total_variation_loss(images.float())
        if not terms:
            raise UserError("every generator loss weight is 0: nothing would train the generator; "
                            "set distill.g_steps=0 or give a loss weight")
        total = torch.stack(list(terms.values())).sum()
        self._optimise(total, self.generator_optimizer, self.generator_scaler,
                       list(self.generator.parameters()) + list(self.projection_head.parameters()))
        terms["g_total"] = total
        return terms

    def student_step(self) -> dict[str, torch.Tensor]:
        cfg, w = self.config, self.config.loss
        self.student.train()
        images, y = self.synthetic_batch()
        if cfg.distill.augment:
            images = self.augment(images, cfg.distill.augment_padding, cfg.distill.augment_flips)
        if cfg.distill.affine:
            images = self.warp(images)
        if cfg.distill.mixup:  # the pseudo-label of a mix stays its first image's (only the student CE uses it)
            images = self.mix(images)
        taps = [tap for tap in (self.teacher_taps, self.teacher_hint_taps) if tap is not None]
        with torch.no_grad(), self.precision.autocast():
            _set_active(taps, True)
            t_logits = self.teacher_forward(images).float()
            _set_active(taps, False)
        labels = self._pseudo_labels(y, t_logits)
        taps = [tap for tap in (self.student_taps, self.student_hint_taps) if tap is not None]
        _set_active(taps, True)
        with self.precision.autocast():
            s_logits = self.student_train(images).float()
        _set_active(taps, False)
        terms: dict[str, torch.Tensor] = {}
        if w.kd:
            terms["s_kd"] = w.kd * teacher_student_distance(t_logits, s_logits, w.distance, w.kd_temperature)
        student_ikd = w.ikd if w.student_ikd is None else w.student_ikd
        if student_ikd:
            terms["s_ikd"] = student_ikd * ikd_loss(s_logits, t_logits)
        student_ce = w.ce if w.student_ce is None else w.student_ce
        if student_ce:
            terms["s_ce"] = student_ce * pseudo_cross_entropy(s_logits, labels, on_softmax=w.ce_on_softmax)
        if self.student_taps is not None:
            terms["s_attention"] = w.attention * attention_transfer_loss(self.student_taps.take(),
                                                                         self.teacher_taps.take())
        if self.student_hint_taps is not None:
            terms["s_hint"] = w.hint * channel_hint_loss(self.student_hint_taps.take(), self.teacher_hint_taps.take(),
                                                         self.hint_channels)
        if not terms:
            raise UserError("every student loss weight is 0: the student would not learn; set loss.kd > 0")
        total = torch.stack(list(terms.values())).sum()
        self._optimise(total, self.student_optimizer, self.student_scaler, list(self.student.parameters()))
        terms["s_total"] = total
        self.images_seen += cfg.distill.batch_size
        return terms

    def _optimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  params: list[torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.config.distill.max_grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.config.distill.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()

    def _apply_learning_rates(self) -> dict[str, float]:
        d, g = self.config.distill, self.config.generator
        total = d.iterations
        s_lr = lr_at(self.iteration, d.student_lr, total, d.warmup_iterations, d.schedule) * self.lr_scale
        g_lr = lr_at(self.iteration, g.lr, total, 0, g.schedule) * self.lr_scale
        set_lr(self.student_optimizer, s_lr)
        set_lr(self.generator_optimizer, g_lr)
        return {"lr_student": s_lr, "lr_generator": g_lr}

    def train_iteration(self) -> dict[str, torch.Tensor]:
        """One iteration: generator steps, then student steps. Returns detached loss tensors (no sync)."""
        self._apply_learning_rates()
        terms: dict[str, torch.Tensor] = {}
        for _ in range(self.config.distill.g_steps):
            for key, value in self.generator_step().items():
                terms[key] = terms.get(key, 0) + value.detach() / self.config.distill.g_steps
        student_steps = self.config.distill.s_steps if self.iteration >= self.config.distill.generator_warmup else 0
        for _ in range(student_steps):
            for key, value in self.student_step().items():
                terms[key] = terms.get(key, 0) + value.detach() / self.config.distill.s_steps
        self._track_finiteness(terms)
        return terms

    # --------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Run until ``distill.iterations`` (or ``request_stop``); returns the summary."""
        d = self.config.distill
        self._emit("on_run_start")
        self._fit_start = self._window_start = time.perf_counter()
        while self.iteration < d.iterations:
            terms = self.train_iteration()
            self.iteration += 1
            self._accumulate(terms)
            last = self.iteration == d.iterations
            due_log = self.iteration % d.log_every == 0 or last
            due_eval = _due(self.iteration, d.eval_every, last) and self.test_set is not None
            due_checkpoint = _due(self.iteration, d.checkpoint_every, last)
            if (due_log or due_eval or due_checkpoint) and self._diverged():
                continue  # rolled back to the last good checkpoint
            if due_log:
                self._log()
            if due_eval:
                self.evaluate()
            if _due(self.iteration, d.sample_every, last):
                self.emit_samples()
            if due_checkpoint:
                self.save_checkpoint()
            self._emit("on_iteration_end")
            if self._stop_agreed(due_log):
                break
        status = "finished"
        if self.iteration < d.iterations:
            status = "stopped"
            self._log()
            self.save_checkpoint()
        summary = self.summary(self.elapsed_s(), status)
        self._fit_start = None
        self._emit("on_run_end", summary)
        return summary

    def elapsed_s(self) -> float:
        """Training wall time, including the time before a resume."""
        running = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self.elapsed_before_resume + running

    def request_stop(self) -> None:
        """Finish the current iteration, checkpoint, and return from ``fit``."""
        self.stop_requested = True

    def _stop_agreed(self, due_log: bool) -> bool:
        """Whether to leave the loop now. Alone, at once; with several processes, every rank must leave at
        the same iteration, so they agree (one all-reduce) at logging iterations only."""
        if self.world_size == 1:
            return self.stop_requested
        if not due_log:
            return False
        flag = torch.tensor(float(self.stop_requested), device=self.device)
        self.stop_requested = bool(distributed.all_reduce_max(flag) > 0)
        return self.stop_requested

    def summary(self, wall_s: float, status: str) -> dict[str, Any]:
        d = self.config.distill
        return {
            "status": status,
            "method": d.method,
            "dataset": self.info.name,
            "teacher_arch": self.config.teacher.arch,
            "student_arch": self.config.student.arch,
            "teacher_acc": self.teacher_acc,
            "student_acc": self.last_student_acc,
            "best_student_acc": self.best_student_acc if self.best_student_acc >= 0 else None,
            "iterations": self.iteration,
            "images_seen": self.images_seen,
            "wall_s": round(wall_s, 2),
            "iterations_per_s": round(self.iteration / wall_s, 3) if wall_s > 0 else None,
            "images_per_s": round(self.images_seen / wall_s, 1) if wall_s > 0 else None,
            "device": str(self.device),
            "precision": self.precision.name,
            "world_size": self.world_size,
            "seed": self.config.seed,
        }

    def evaluate(self) -> float:
        acc = evaluate(self.student, self.test_set, self.device, self.config.data.eval_batch_size,
                       self.precision.autocast)
        self.last_student_acc = acc
        improved = acc > self.best_student_acc
        self.best_student_acc = max(self.best_student_acc, acc)
        record = {"iteration": self.iteration, "student_acc": acc, "best_student_acc": self.best_student_acc}
        if improved and self.checkpoint_dir is not None and distributed.is_main():
            save_checkpoint(self.checkpoint_dir / "best.pt", self.student_checkpoint(acc))
        self._emit("on_evaluation", record)
        return acc

    @torch.no_grad()
    def synthesize(self, per_class: int = 8, seed_offset: int = DISPLAY_SEED_OFFSET
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``per_class`` x num_classes images from fixed noise (comparable across iterations), normalised as
        the teacher expects, with the labels they were made for (None for an unconditional generator).

        Training state is untouched: the noise has its own seed and the generator's BN buffers are restored.
        """
        num_classes = self.info.num_classes
        rng = torch.Generator().manual_seed(self.config.seed + seed_offset)
        saved_buffers = {name: b.clone() for name, b in self.generator.named_buffers()}
        n = per_class * num_classes
        z = torch.randn(n, self.config.generator.nz, generator=rng).to(self.device)
        y = (torch.arange(n) // per_class).to(self.device)
        with self.precision.autocast():
            images = self.generator(z, y).float()
        for name, buffer in self.generator.named_buffers():
            buffer.copy_(saved_buffers[name])
        return images, (y if self.generator.conditional else None)

    @torch.no_grad()
    def synthesize_per_class(self, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] grouped by class, for display. An unconditional generator's images are grouped
        by the teacher's prediction; classes it does not produce stay empty (a mode-collapse sign)."""
        factor = 1 if self.generator.conditional else 4
        images, labels = self.synthesize(per_class * factor)
        if labels is None:
            with self.precision.autocast():
                labels = self.teacher(images).argmax(1)
            keep = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(self.info.num_classes)])
            images, labels = images[keep], labels[keep]
        return denormalise(images, self.info).cpu(), labels.cpu()

    def emit_samples(self) -> None:
        if self.callbacks:
            images, labels = self.synthesize_per_class()
            self._emit("on_samples", images, labels)

    # --------------------------------------------------------------------------------- logging, NaNs
    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            self._window[key] = self._window.get(key, 0) + value
        self._window_steps += 1

    def _track_finiteness(self, terms: dict[str, torch.Tensor]) -> None:
        """Remember the first iteration with a non-finite loss without a host-device sync."""
        if not terms:  # an iteration that trained nothing (g_steps=0 inside the generator-only warm-up)
            return
        bad = ~torch.isfinite(torch.stack([v for v in terms.values()])).all()
        now = torch.full((), self.iteration + 1, device=bad.device)
        if self._first_bad_iteration is None:
            self._first_bad_iteration = torch.full((), -1, device=bad.device)
        self._first_bad_iteration = torch.where(bad & (self._first_bad_iteration < 0), now,
                                                self._first_bad_iteration)

    def check_finite(self) -> None:
        """Raise NonFiniteLoss naming the term, the iteration and the last good checkpoint (one sync)."""
        if self._first_bad_iteration is None:
            return
        # Every rank must take the same branch: a NaN on any rank stops (or rolls back) all of them.
        first_bad = distributed.all_reduce_max(self._first_bad_iteration.clone())
        if int(first_bad) < 0:
            return
        iteration = int(first_bad)
        names = [k for k, v in self._window.items() if not math.isfinite(float(v))] or ["(on another process)"]
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        where = (f"The last good checkpoint is {last}; resume from it with a lower learning rate "
                 f"(--resume RUN_DIR --set distill.student_lr=...)") if last and last.exists() else \
            "No checkpoint was written before it."
        raise NonFiniteLoss(f"loss term {names[0]!r} became non-finite (NaN or inf) at iteration {iteration}. "
                            f"{where}")

    def _diverged(self) -> bool:
        """Check the losses since the last check; on NaN/inf stop, or roll back (``nan_policy=rollback``)."""
        try:
            self.check_finite()
        except NonFiniteLoss:
            if self.config.distill.nan_policy == "rollback" and self._rollback():
                return True
            raise
        return False

    def _log(self) -> None:
        if not self._window_steps:
            return
        now = time.perf_counter()
        steps = self._window_steps
        record: dict[str, float] = {"iteration": self.iteration}
        record.update({k: float(v) / steps for k, v in self._window.items()})
        record.update(self._apply_learning_rates())
        seconds = now - self._window_start
        record["iterations_per_s"] = steps / seconds if seconds > 0 else float("nan")
        record["images_per_s"] = steps * self.config.distill.s_steps * self.config.distill.batch_size / seconds \
            if seconds > 0 else float("nan")
        self._window, self._window_steps, self._window_start = {}, 0, now
        self._emit("on_log", record)

    def _rollback(self) -> bool:
        """Reload the last good checkpoint and halve the learning rates; False if there is none."""
        last = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        if last is None or not last.exists() or self.lr_scale < 1 / 16:
            return False
        scale, elapsed = self.lr_scale / 2, self.elapsed_s()
        self.load_state_dict(load_checkpoint(last))
        self.lr_scale = scale
        self.elapsed_before_resume, self._fit_start = elapsed, time.perf_counter()
        self._window, self._window_steps, self._first_bad_iteration = {}, 0, None
        self._emit("on_log", {"iteration": self.iteration, "rollback_to": self.iteration, "lr_scale": scale})
        return True

    # ---------------------------------------------------------------------------------- checkpoints
    def student_checkpoint(self, acc: float | None) -> dict[str, Any]:
        """A self-describing student checkpoint that ``cpsc-dfkd eval`` can load."""
        return {"kind": "student", "format": CHECKPOINT_FORMAT, "arch": self.config.student.arch,
                "dataset": self.info.name, "num_classes": self.info.num_classes, "in_channels": self.info.channels,
                "test_acc": acc, "iteration": self.iteration,
                "state_dict": {k: v.detach().cpu() for k, v in self.student.state_dict().items()}}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "distill", "format": CHECKPOINT_FORMAT, "iteration": self.iteration,
            "student": self.student.state_dict(), "generator": self.generator.state_dict(),
            "projection_head": self.projection_head.state_dict(),
            "student_optimizer": self.student_optimizer.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "student_scaler": self.student_scaler.state_dict(), "generator_scaler": self.generator_scaler.state_dict(),
            "noise_rng": self.noise_rng.get_state(), "rng": capture_rng_state(),
            "memory": self.memory.state_dict() if self.memory is not None else None,
            "best_student_acc": self.best_student_acc, "last_student_acc": self.last_student_acc,
            "lr_scale": self.lr_scale, "images_seen": self.images_seen,
            "elapsed_s": self.elapsed_s(), "config": to_dict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "distill":
            raise UserError(f"not a distillation checkpoint (kind={state.get('kind')!r})")
        check_state_dict(self.student, state["student"], "the checkpoint's student")
        check_state_dict(self.generator, state["generator"], "the checkpoint's generator")
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.projection_head.load_state_dict(state["projection_head"])
        self.student_optimizer.load_state_dict(state["student_optimizer"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.student_scaler.load_state_dict(state["student_scaler"])
        self.generator_scaler.load_state_dict(state["generator_scaler"])
        self.noise_rng.set_state(state["noise_rng"])
        if self.memory is not None and state.get("memory") is not None:
            self.memory.load_state_dict(state["memory"], self.rank)
        restore_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.best_student_acc = state["best_student_acc"]
        self.last_student_acc = state["last_student_acc"]
        self.lr_scale = state["lr_scale"]
        self.images_seen = state["images_seen"]
        self.elapsed_before_resume = state["elapsed_s"]
        self._first_bad_iteration = None
        self._window, self._window_steps = {}, 0

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/last.pt`` atomically (rank 0 only), after checking every loss was finite."""
        self.check_finite()
        if self.checkpoint_dir is None:
            return None
        state = self.state_dict()  # on every rank: the memory is gathered from all of them
        if not distributed.is_main():
            return None
        path = self.checkpoint_dir / "last.pt"
        save_checkpoint(path, state)
        self._emit("on_checkpoint", path)
        return path

    # ------------------------------------------------------------------------------------------ events
    def _emit(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)


def generator_for(config: Config) -> nn.Module:
    """The generator (or ensemble) that ``config.generator`` describes, for ``config.data``'s images."""
    g, info = config.generator, dataset_info(config.data.name)
    pixel_range = (info.black, info.white) if g.output == "range" else None
    return create_generator(g.conditional, g.nz, g.ngf, info.image_size, info.channels, info.num_classes,
                            members=g.members, pixel_range=pixel_range)


def _set_active(taps: list[ActivationTap], active: bool) -> None:
    for tap in taps:
        tap.active = active


def _due(iteration: int, every: int, last: bool) -> bool:
    return last or (every > 0 and iteration % every == 0)
