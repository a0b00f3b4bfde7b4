"""The distillation loop: what each step changes, the run directory, every method, exact resume, NaN guard."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from cpsc_dfkd.distill import Callback, Distiller, NonFiniteLoss
from cpsc_dfkd.experiment import config_for_resume, run_distillation
from cpsc_dfkd.methods import RECIPES
from cpsc_dfkd.runs import load_checkpoint, read_metrics
from cpsc_dfkd.teacher import load_teacher

from conftest import tiny_config


def make_distiller(teacher_path, *overrides, **kwargs):
    config = tiny_config(*overrides, teacher=teacher_path)
    teacher, _ = load_teacher(teacher_path, config)
    return Distiller(config, teacher, **kwargs)


def student_bn_buffers(distiller):
    return {k: v.clone() for k, v in distiller.student.state_dict().items() if "running" in k}


def test_student_nesterov_option_reaches_the_optimizer_and_trains(digits_teacher):
    plain = make_distiller(digits_teacher)
    nesterov = make_distiller(digits_teacher, "distill.student_nesterov=true", "distill.generator_warmup=0")
    assert [g["nesterov"] for g in plain.student_optimizer.param_groups] == [False]
    assert [g["nesterov"] for g in nesterov.student_optimizer.param_groups] == [True]
    before = [p.clone() for p in nesterov.student.parameters()]
    nesterov.train_iteration()
    assert any(not torch.equal(a, b) for a, b in zip(before, nesterov.student.parameters()))


def test_generator_step_leaves_the_student_untouched(digits_teacher):
    d = make_distiller(digits_teacher)
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    g_before = [p.clone() for p in d.generator.parameters()]
    d.generator_step()
    after = d.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert any(not torch.equal(a, b) for a, b in zip(g_before, d.generator.parameters()))
    assert all(p.grad is None for p in d.student.parameters())


def test_reference_option_lets_the_generator_step_update_student_bn_statistics(digits_teacher):
    d = make_distiller(digits_teacher, "distill.student_bn_in_g_step=train")
    before = student_bn_buffers(d)
    d.generator_step()
    assert any(not torch.equal(before[k], v) for k, v in student_bn_buffers(d).items())


def test_adam_state_accumulates_across_generator_steps_unless_reference_behaviour(digits_teacher):
    d = make_distiller(digits_teacher)
    for _ in range(3):
        d.generator_step()
    first = next(iter(d.generator_optimizer.state.values()))
    assert int(first["step"]) == 3
    ref = make_distiller(digits_teacher, "generator.reset_optimizer_each_step=true")
    for _ in range(3):
        ref.generator_step()
    assert int(next(iter(ref.generator_optimizer.state.values()))["step"]) == 1


def test_class_embeddings_learn_at_their_own_rate(digits_teacher):
    d = make_distiller(digits_teacher, "generator.embedding_lr_scale=10", "generator.schedule=constant")
    d._apply_learning_rates()
    embedding_ids = {id(p) for p in d.generator.class_embedding_parameters()}
    assert len(embedding_ids) == 2 * 4  # scale and shift of each conditional BN (3 hidden + output)
    rates = {id(p): group["lr"] for group in d.generator_optimizer.param_groups for p in group["params"]}
    base = d.config.generator.lr
    assert all(rates[i] == pytest.approx(10 * base) for i in embedding_ids)
    assert all(rate == pytest.approx(base) for i, rate in rates.items() if i not in embedding_ids)
    unconditional = make_distiller(digits_teacher, "generator.conditional=false")
    assert unconditional.generator.class_embedding_parameters() == []
    assert len(unconditional.generator_optimizer.param_groups) == 2  # generator, projection head
    default = make_distiller(digits_teacher)  # scale 1: the optimiser layout of earlier checkpoints
    assert len(default.generator_optimizer.param_groups) == 2


@pytest.mark.parametrize("augment_padding, flips", [(None, True), (1, True), (1, False)])
def test_student_step_augments_synthetic_images_and_the_teacher_labels_the_augmented_ones(digits_teacher,
                                                                                         augment_padding, flips):
    from cpsc_dfkd.data import apply_crop_flip, draw_crop_flip

    seen = []
    d = make_distiller(digits_teacher, "distill.augment=true", "distill.memory_batches=0",
                       f"distill.augment_padding={'null' if augment_padding is None else augment_padding}",
                       f"distill.augment_flips={str(flips).lower()}")
    d.info = dataclasses.replace(d.info, flip=True)  # digits never flip; pretend they may, to see the option
    d.teacher_forward = lambda images, **kw: (seen.append(images.clone()), d.teacher(images, **kw))[1]
    d.noise_rng.manual_seed(5)
    d.student_step()
    d.noise_rng.manual_seed(5)  # replay the same stream: the noise, then the crops
    z, y = d.sample_noise()
    padding = d.info.crop_padding if augment_padding is None else augment_padding  # the data set's is 4
    dy, dx, flipped = draw_crop_flip(d.config.distill.batch_size, padding, flips, d.noise_rng)
    assert flipped.any() == flips
    with torch.no_grad():
        plain = d.generator(z, y)
    assert not torch.allclose(seen[0], plain)
    assert torch.allclose(seen[0], apply_crop_flip(plain, padding, dy, dx, flipped, fill=d.info.black), atol=1e-6)


def test_student_step_mixes_a_share_of_the_images_and_the_teacher_labels_the_mixes(digits_teacher):
    seen = []
    d = make_distiller(digits_teacher, "distill.mixup=0.5", "distill.memory_batches=0", "distill.augment=false")
    d.teacher_forward = lambda images, **kw: (seen.append(images.clone()), d.teacher(images, **kw))[1]
    d.noise_rng.manual_seed(5)
    d.student_step()
    d.noise_rng.manual_seed(5)  # replay the stream: the noise, then which rows mix, their weights, partners
    z, y = d.sample_noise()
    n = d.config.distill.batch_size
    mixed = torch.rand(n, generator=d.noise_rng) < 0.5
    weight = torch.rand(n, generator=d.noise_rng)
    partner = torch.randperm(n, generator=d.noise_rng)
    with torch.no_grad():
        plain = d.generator(z, y)
    w = torch.where(mixed, weight, torch.ones(())).view(-1, 1, 1, 1)
    assert 0 < mixed.sum() < n
    assert torch.allclose(seen[0], w * plain + (1 - w) * plain[partner], atol=1e-6)
    assert torch.equal(seen[0][~mixed], plain[~mixed])


def test_student_step_warps_a_share_of_the_images_each_by_its_own_draw(digits_teacher):
    from cpsc_dfkd.data import apply_affine, draw_affine

    seen = []
    d = make_distiller(digits_teacher, "distill.affine=0.5", "distill.memory_batches=0", "distill.augment=false",
                       "distill.mixup=0")
    d.teacher_forward = lambda images, **kw: (seen.append(images.clone()), d.teacher(images, **kw))[1]
    d.noise_rng.manual_seed(4)
    d.student_step()
    d.noise_rng.manual_seed(4)  # replay the stream: the noise, then the maps
    z, y = d.sample_noise()
    theta, moved = draw_affine(d.config.distill.batch_size, 0.5, d.config.distill.affine_scale,
                               d.config.distill.affine_degrees, d.noise_rng)
    with torch.no_grad():
        plain = d.generator(z, y)
    assert torch.allclose(seen[0], apply_affine(plain, theta, fill=d.info.black), atol=1e-5)
    assert 0 < moved.sum() < len(moved)
    assert torch.equal(seen[0][~moved], plain[~moved])  # rows left alone are not resampled at all
    assert not torch.allclose(seen[0][moved], plain[moved], atol=1e-3)


@pytest.mark.parametrize("student_augment", [("null", "true"), ("1", "false")])
def test_generator_jitter_shows_the_models_crops_and_keeps_the_images_as_made_in_memory(digits_teacher,
                                                                                       student_augment):
    """The jitter crops and flips as the data set says whatever ``distill.augment_padding`` and
    ``distill.augment_flips`` say (they are the student step's alone)."""
    from cpsc_dfkd.data import apply_crop_flip, draw_crop_flip

    seen = []
    padding, flips = student_augment
    d = make_distiller(digits_teacher, "generator.jitter=true", "distill.memory_batches=2",
                       f"distill.augment_padding={padding}", f"distill.augment_flips={flips}")
    d.info = dataclasses.replace(d.info, flip=True)  # digits never flip; pretend they may, to see the flips
    d.teacher_forward = lambda images, **kw: (seen.append(images.detach().clone()), d.teacher(images, **kw))[1]
    d.noise_rng.manual_seed(3)
    d.generator_step()
    stored = d.memory.images[0]
    d.noise_rng.manual_seed(3)
    d.sample_noise()
    draws = draw_crop_flip(d.config.distill.batch_size, d.info.crop_padding, True, d.noise_rng)
    assert draws[2].any()
    assert torch.allclose(seen[0], apply_crop_flip(stored, d.info.crop_padding, *draws, fill=d.info.black),
                          atol=1e-6)
    assert not torch.allclose(seen[0], stored)
    assert all(p.grad is not None for p in d.generator.parameters() if p.requires_grad)  # crops are differentiable


@pytest.mark.parametrize("term, shared, own", [("s_ce", "loss.ce", "loss.student_ce"),
                                               ("s_ikd", "loss.ikd", "loss.student_ikd")])
def test_student_step_term_has_its_own_weight_which_defaults_to_the_generators(digits_teacher, term, shared, own):
    def student_terms(*overrides):
        d = make_distiller(digits_teacher, f"{shared}=0.5", *overrides)
        d.noise_rng.manual_seed(7)
        return d.student_step()

    same, heavier, off = student_terms(), student_terms(f"{own}=1.5"), student_terms(f"{own}=0")
    assert torch.allclose(heavier[term], same[term] * 3)  # same images (same seed), three times the weight
    assert term not in off
    assert torch.allclose(off["s_total"], same["s_total"] - same[term])


def test_student_ikd_leaves_the_generator_steps_ikd_alone(digits_teacher):
    steps = []
    for overrides in ((), ("loss.student_ikd=1.5",)):
        d = make_distiller(digits_teacher, "loss.ikd=0.5", *overrides)
        d.noise_rng.manual_seed(7)
        steps.append(d.generator_step())
    assert torch.allclose(steps[0]["g_ikd"], steps[1]["g_ikd"])


def test_projection_head_is_trained_when_feature_sizes_differ(digits_teacher):
    d = make_distiller(digits_teacher)
    assert isinstance(d.projection_head, torch.nn.Linear)  # LeNet-5 84 features vs half 42
    before = d.projection_head.weight.clone()
    d.generator_step()
    assert not torch.equal(before, d.projection_head.weight)
    frozen = make_distiller(digits_teacher, "distill.train_projection_head=false")
    before = frozen.projection_head.weight.clone()
    frozen.generator_step()
    assert torch.equal(before, frozen.projection_head.weight)


def test_student_step_changes_only_the_student(digits_teacher):
    d = make_distiller(digits_teacher)
    g_before = [p.clone() for p in d.generator.parameters()]
    s_before = [p.clone() for p in d.student.parameters()]
    d.student_step()
    assert all(torch.equal(a, b) for a, b in zip(g_before, d.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(s_before, d.student.parameters()))


def test_memory_feeds_the_student_with_past_generator_batches(digits_teacher):
    d = make_distiller(digits_teacher, "distill.memory_batches=2")
    d.generator_step()
    d.generator_step()
    d.generator_step()
    assert d.memory.filled == 2
    images, labels = d.synthetic_batch()
    stored = d.memory.images.view(-1, *images.shape[1:])
    assert all(any(torch.equal(img, s) for s in stored) for img in images)
    assert torch.equal(labels.cpu(), torch.arange(len(labels)) % 10)


def test_an_iteration_that_trains_nothing_is_fine_and_the_run_goes_on(digits_teacher):
    # g_steps=0 inside the generator-only warm-up: neither model trains (real_data_ceiling.py relies on it)
    d = make_distiller(digits_teacher, "distill.g_steps=0", "distill.generator_warmup=2")
    student_before = [p.clone() for p in d.student.parameters()]
    summary = d.fit()
    assert summary["iterations"] == 4 and d.images_seen == 2 * 5 * 20
    assert any(not torch.equal(a, b) for a, b in zip(student_before, d.student.parameters()))


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_every_method_runs_an_iteration_with_finite_losses(digits_teacher, method):
    d = make_distiller(digits_teacher, f"distill.method={method}")
    terms = d.train_iteration()
    assert terms and all(torch.isfinite(v) for v in terms.values())


def test_unconditional_generator_groups_samples_by_teacher_prediction(digits_teacher):
    d = make_distiller(digits_teacher, "generator.conditional=false")
    images, labels = d.synthesize_per_class(per_class=2)
    assert len(images) == len(labels) <= 20
    assert torch.all(labels[1:] >= labels[:-1])


def test_showing_samples_does_not_change_training_state(digits_teacher):
    d = make_distiller(digits_teacher)
    before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    rng = d.noise_rng.get_state()
    d.synthesize_per_class()
    assert all(torch.equal(before[k], v) for k, v in d.generator.state_dict().items())
    assert torch.equal(rng, d.noise_rng.get_state())


def test_bf16_autocast_and_channels_last_run_on_cpu(digits_teacher):
    d = make_distiller(digits_teacher, "amp=bf16", "channels_last=true")
    assert d.precision.name == "bf16"
    terms = d.train_iteration()
    assert all(torch.isfinite(v) for v in terms.values())


def test_run_directory_holds_config_metrics_summary_checkpoints_and_samples(digits_teacher, tmp_path):
    summary = run_distillation(tiny_config(teacher=digits_teacher), tmp_path / "run", progress=False,
                               log=lambda m: None)
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "student.pt").exists()
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    assert (run / "samples" / "latest.png").exists() and (run / "samples" / "iter_000002.png").exists()
    saved = json.loads((run / "summary.json").read_text())
    for key in ("teacher_acc", "student_acc", "best_student_acc", "wall_s", "iterations", "device"):
        assert saved[key] is not None, key
    assert saved["iterations"] == 4
    assert all(saved[k] == summary[k] for k in summary if k in saved)
    events = [r["event"] for r in read_metrics(run / "metrics.jsonl")]
    assert events.count("train") == 2 and events.count("eval") == 2
    assert not (run / ".lock").exists()


def test_an_existing_run_directory_is_never_overwritten(digits_teacher, tmp_path):
    from cpsc_dfkd.errors import UserError

    run_distillation(tiny_config(teacher=digits_teacher), tmp_path / "run", progress=False, log=lambda m: None)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="already holds a run; continue it with --resume"):
        run_distillation(tiny_config(teacher=digits_teacher), tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


class StopAt(Callback):
    def __init__(self, iteration):
        self.iteration = iteration

    def on_iteration_end(self, distiller):
        if distiller.iteration == self.iteration:
            distiller.request_stop()


@pytest.mark.parametrize("memory, augment, affine, mixup", [(0, False, 0.0, 0.0), (3, True, 0.5, 0.5)])
def test_a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(digits_teacher, tmp_path, memory,
                                                                               augment, affine, mixup):
    overrides = ["distill.iterations=6", "distill.checkpoint_every=100", f"distill.memory_batches={memory}",
                 f"distill.augment={str(augment).lower()}", f"distill.affine={affine}", f"distill.mixup={mixup}"]
    config = tiny_config(*overrides, teacher=digits_teacher)
    run_distillation(config, tmp_path / "straight", progress=False, log=lambda m: None)
    stopped = run_distillation(config, tmp_path / "split", callbacks=[StopAt(3)], progress=False, log=lambda m: None)
    assert stopped["status"] == "stopped" and stopped["iterations"] == 3
    resumed = run_distillation(config_for_resume(tmp_path / "split"), tmp_path / "split", resume=True,
                               progress=False, log=lambda m: None)
    assert resumed["iterations"] == 6
    a = load_checkpoint(tmp_path / "straight" / "student.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "split" / "student.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    iterations = [r["iteration"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if r["event"] == "train"]
    assert iterations == sorted(set(iterations))  # no duplicated records after the resume


class PoisonLoss(Callback):
    """Makes the generator's learning rate absurd so that its losses blow up."""

    def on_iteration_end(self, distiller):
        if distiller.iteration == 2:
            with torch.no_grad():
                for p in distiller.student.parameters():
                    p.fill_(float("nan"))


def test_a_non_finite_loss_stops_the_run_naming_the_term_iteration_and_checkpoint(digits_teacher, tmp_path):
    config = tiny_config("distill.iterations=6", teacher=digits_teacher)
    with pytest.raises(NonFiniteLoss) as info:
        run_distillation(config, tmp_path / "run", callbacks=[PoisonLoss()], progress=False, log=lambda m: None)
    message = str(info.value)
    assert "became non-finite" in message and "at iteration 3" in message and "last.pt" in message
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 2
    assert not (tmp_path / "run" / ".lock").exists()


def test_rollback_policy_reloads_the_last_good_checkpoint_and_lowers_the_learning_rate(digits_teacher, tmp_path):
    config = tiny_config("distill.iterations=6", "distill.nan_policy=rollback", teacher=digits_teacher)
    summary = run_distillation(config, tmp_path / "run", callbacks=[PoisonLoss()], progress=False, log=lambda m: None)
    assert summary["iterations"] == 6
    rollbacks = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rollback_to" in r]
    assert rollbacks and rollbacks[0]["lr_scale"] == 0.5
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


_opened: list[str] | None = None


def _audit(event, args):
    if _opened is not None and event == "open" and args and isinstance(args[0], (str, bytes)):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)


def test_distillation_is_data_free_only_the_test_split_is_ever_opened(tmp_path, monkeypatch):
    """Fashion-MNIST distillation with a data root that holds the test files only, and a proof that
    no file of the training split is opened (every open() is audited)."""
    global _opened
    import numpy as np

    from cpsc_dfkd import data
    from cpsc_dfkd.config import resolve
    from cpsc_dfkd.models import create_model
    from cpsc_dfkd.runs import save_checkpoint

    from test_data import make_fake_mnist

    root = tmp_path / "fashion"
    make_fake_mnist(root, "test", n=40)
    monkeypatch.setattr(data, "DEBIAN_DATASETS", tmp_path / "no-debian")
    monkeypatch.delenv("CPSC_DFKD_DATA", raising=False)
    teacher = create_model("lenet5_bn", 10, 1)
    save_checkpoint(tmp_path / "teacher.pt", {
        "kind": "teacher", "arch": "lenet5_bn", "dataset": "fashion-mnist", "num_classes": 10, "in_channels": 1,
        "test_acc": None, "state_dict": teacher.state_dict()})
    config = resolve("fashion-mnist", [o for o in __import__("conftest").TINY if not o.startswith("teacher.")],
                     {"data": {"root": str(root)}, "teacher": {"checkpoint": str(tmp_path / "teacher.pt")}})
    with pytest.raises(Exception):
        data.load_split("fashion-mnist", "train", str(root))  # the training split really is absent
    _opened = []
    try:
        summary = run_distillation(config, tmp_path / "run", progress=False, log=lambda m: None)
    finally:
        opened, _opened = _opened, None
    assert summary["iterations"] == 4 and summary["student_acc"] is not None
    assert any("t10k-images" in p for p in opened)
    assert not [p for p in opened if "train-images" in p or "train-labels" in p]
    assert np.isfinite(summary["best_student_acc"])


def test_generator_ensemble_trains_every_member_and_survives_a_checkpoint(digits_teacher):
    d = make_distiller(digits_teacher, "generator.members=2")
    before = [[p.clone() for p in member.parameters()] for member in d.generator.members]
    d.generator_step()
    for member, old in zip(d.generator.members, before):
        assert any(not torch.equal(p, q) for p, q in zip(member.parameters(), old))
    d.student_step()
    again = make_distiller(digits_teacher, "generator.members=2")
    again.load_state_dict(d.state_dict())
    z, y = d.sample_noise()
    d.generator.eval(), again.generator.eval()
    torch.testing.assert_close(again.generator(z, y), d.generator(z, y))


def test_each_generators_pseudo_ce_reads_only_its_share_of_the_teacher_features(digits_teacher):
    d = make_distiller(digits_teacher, "generator.members=2", "loss.ce_feature_share=0.5")
    z, y = d.sample_noise()
    with torch.no_grad():
        t_logits, t_features = d.teacher(d.generator(z, y), return_features=True)
    t_features.requires_grad_(True)
    owner = d.generator.assign(z.shape[0], y)
    logits = d._ce_logits(t_logits, t_features, z, y)
    torch.testing.assert_close(logits, d.teacher.classify(t_features * d.ce_feature_masks[owner] * 2))
    torch.nn.functional.cross_entropy(logits, y).backward()
    assert torch.all(t_features.grad[d.ce_feature_masks[owner] == 0] == 0)
    assert t_features.grad.abs().sum() > 0
    assert "g_ce" in d.generator_step()
    whole = make_distiller(digits_teacher, "generator.members=2")
    assert whole.ce_feature_masks is None and whole._ce_logits(t_logits, t_features, z, y) is t_logits
