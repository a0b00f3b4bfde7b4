"""Every setting of a run, in one place: dataclasses, YAML presets and ``key=value`` overrides.

A run's config is resolved in a fixed order, each layer overriding the one before:

1. the dataclass defaults below;
2. a preset (``cpsc_dfkd/presets/NAME.yaml``);
3. the recipe of ``distill.method`` (``methods.py``), which sets loss weights for baselines
   and ablations;
4. the user's ``--set section.key=value`` overrides, which always win.

Validation names the bad field and says what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # explicit data root; see data.py for the search order
    download: bool = False  # allow torchvision to download a missing data set
    eval_batch_size: int = 1024
    num_workers: int = 0


@dataclass
class TeacherConfig:
    arch: str = "lenet5_bn"
    checkpoint: str | None = None  # an existing teacher; without it one is trained or reused from the cache
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random crops (and flips where the data set allows)
    # Shift of those crops in pixels; null = the data set's (image_size // 8, 4 on 32x32 images). The generator's
    # jitter keeps the data set's shift whatever this is.
    augment_padding: int | None = None
    # Stochastic weight averaging (Izmailov et al. 2018): null = off; N = the lr's cosine runs over the first
    # epochs - N epochs down to swa_lr, stays there for the last N, and the weights of those N epochs' ends are
    # averaged, with BatchNorm statistics recomputed on the training images afterwards.
    swa_epochs: int | None = None
    swa_lr: float | None = None  # null = lr / 5


@dataclass
class StudentConfig:
    arch: str = "lenet5_half_bn"
    # Where the student's weights start: "scratch" (random, as in the paper) or "teacher": the teacher's
    # strongest channels of every layer, for a student that is a narrower copy of the teacher
    # (student_init.py; not part of CPSC-DFKD).
    init: Literal["scratch", "teacher"] = "scratch"


@dataclass
class GeneratorConfig:
    conditional: bool = True  # CPSC-DFKD's G(z, y); False gives the DAFL/DFAD G(z)
    nz: int = 256
    ngf: int = 64
    # K > 1 trains K generators with their own initialisations; each makes an equal share of every class
    # in every batch (models.GeneratorEnsemble). The cost per batch stays about the same.
    members: int = 1
    # The last layer: "bn" = tanh then a (conditional) batch norm, the paper's layout, whose output can leave the
    # range of real pixels; "range" = a sigmoid onto the data's valid range, black to white.
    output: Literal["bn", "range"] = "bn"
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    schedule: Literal["constant", "cosine"] = "cosine"
    # Learning-rate multiplier for the class embeddings (the conditional BN scales and shifts). They are the
    # only place the label enters G; Adam moves each weight by about lr per step, so at lr 1e-3 the classes
    # stay nearly alike for hundreds of steps. 1 = the reference code.
    embedding_lr_scale: float = 1.0
    # DeepInversion's jitter: the teacher and student see random crops and flips of each synthetic batch in the
    # generator step, so images must be recognised wherever they sit, as real objects are (the memory keeps
    # the images as made).
    jitter: bool = False
    # Reference-code defect, kept as an option for measurement: a fresh Adam at every G step.
    reset_optimizer_each_step: bool = False


@dataclass
class LossConfig:
    """Loss weights. Generator-step terms and student-step terms are listed in method.md."""

    adv: float = 1.0  # G step: weight of the adversarial part, -D(t, s) - ikd * MSE(s, t) (1 = the paper)
    kd: float = 1.0  # S step: minimise the teacher-student distance (the distillation loss itself)
    distance: Literal["kl", "l1"] = "kl"  # KL(t || s) as in the paper, or DFAD's mean absolute error on logits
    ikd: float = 5.0  # alpha: MSE between logits, same sign convention as adv
    ikd_log: bool = False  # use log(MSE) in the generator step, as the CIFAR-10 reference does
    bn: float = 1.0  # beta: teacher BatchNorm statistics prior (G step)
    bn_normalized: bool = False  # measure BN gaps relative to the running statistics (see losses.py)
    bn_first_layer_weight: float = 1.0  # weight of the first BN layer's gap (DeepInversion uses 10)
    scl: float = 0.7  # gamma: pseudo-supervised contrast, SupCon on teacher/student features (G step)
    ce: float = 0.7  # eta: pseudo cross-entropy on the generator's labels (G step, and S step unless below)
    # Weight of the pseudo cross-entropy in the student step; null = the same as ce (the paper). 0 leaves the
    # student to learn from the teacher's soft labels alone.
    student_ce: float | None = None
    # Weight of IKD (the logit MSE) in the student step; null = the same as ikd (the paper). The generator step's
    # IKD keeps loss.ikd, so the student can match the teacher's logits harder than the generator seeks to
    # part them (docs/fashion-mnist-tuning-log.md, SIKD).
    student_ikd: float | None = None
    # Not in the paper: each generator's pseudo CE (G step) reads only its own fixed random share of the
    # teacher's penultimate features, the rest zeroed and the kept ones scaled by 1 / share; 1 = all of them.
    # Each generator then has to show the class through different evidence (docs/fashion-mnist-tuning-log.md, CUE).
    ce_feature_share: float = 1.0
    # Not in the paper: mode seeking (Mao et al. 2019) against a class collapsing onto one image (G step).
    diversity: float = 0.0
    scl_temperature: float = 0.07
    kd_temperature: float = 1.0
    one_hot: float = 0.0  # DAFL: CE of the teacher against its own argmax (G step)
    activation: float = 0.0  # DAFL: reward large teacher feature activations (G step)
    info_entropy: float = 0.0  # DAFL: reward a balanced class histogram (G step)
    attention: float = 0.0  # ZSKT: attention transfer between teacher and student (S step)
    # Not in the paper: with student.init=teacher, match each student BatchNorm output to the teacher's at the
    # channels it was copied from (S step), so the student stays a pruned copy of the teacher inside.
    hint: float = 0.0
    tv: float = 0.0  # DeepInversion: total-variation image prior (G step)
    # Reference-code defect, kept as an option: cross-entropy applied to softmax outputs.
    ce_on_softmax: bool = False


@dataclass
class DistillConfig:
    method: str = "cpsc-dfkd"
    iterations: int = 200
    batch_size: int = 256
    g_steps: int = 1
    s_steps: int = 5
    student_lr: float = 0.1
    student_momentum: float = 0.9
    student_nesterov: bool = False  # Nesterov momentum for the student's SGD (tuning log NES)
    student_weight_decay: float = 5e-4
    warmup_iterations: int = 0  # linear warm-up of the student's learning rate
    # The first N iterations train the generator only (no student steps): the student then starts on
    # images the teacher already recognises instead of on noise.
    generator_warmup: int = 0
    schedule: Literal["constant", "cosine"] = "cosine"
    # Fixed behaviour: the student's BatchNorm is frozen (eval mode) during the generator step.
    # "train" reproduces the reference code, whose running statistics absorb generator batches.
    student_bn_in_g_step: Literal["eval", "train"] = "eval"
    train_projection_head: bool = True  # the reference code never trains it
    # The student learns from the last N generator batches instead of freshly made images (0 = reference:
    # new images for every student step). See memory.py.
    memory_batches: int = 0
    # Random crops (and flips where the data set allows) of the synthetic images of each student step. The
    # teacher labels the augmented image, so every crop is a new, correctly labelled input for free.
    augment: bool = False
    # Padding of those crops (shifts of up to this many pixels); null = the data set's (image_size // 8, as in
    # teacher training and the generator's jitter). Real test images are centred: on real training images
    # this student loses 2 points to 4-pixel crops (docs/fashion-mnist-tuning-log.md, "The student step's crops").
    augment_padding: int | None = None
    # Horizontal flips among those augmentations, where the data set allows them (never for digits). Real
    # Fashion-MNIST shoes all face left: false keeps the student's images as the generator turned them.
    augment_flips: bool = True
    # Fraction of the student's synthetic images replaced by a mix of two (mixup with a uniform weight; the
    # teacher labels the mix). Generated images sit deep inside their class; mixes fill the space between
    # classes, where the teacher's soft labels carry most information. 0 = off.
    mixup: float = 0.0
    # Fraction of the student's synthetic images stretched along each axis by up to +-affine_scale and
    # turned by up to affine_degrees (each image its own draw; the teacher labels the result). A generator
    # makes few shapes per class; real garments differ in width, length and pose. 0 = off.
    affine: float = 0.0
    affine_scale: float = 0.2
    affine_degrees: float = 10.0
    log_every: int = 10
    eval_every: int = 50
    sample_every: int = 50
    checkpoint_every: int = 50
    diagnostics_every: int = 0  # 0 = off
    max_grad_norm: float = 0.0  # 0 = no clipping
    nan_policy: Literal["stop", "rollback"] = "stop"


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16/fp16 on CUDA, off on CPU
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False  # multi-GPU: make generator/student BN statistics global
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


# Range rules: field path -> (predicate, what is allowed).
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "data.eval_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "data.num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "teacher.epochs": (lambda v: v >= 0, "an integer >= 0"),
    "teacher.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "teacher.lr": (lambda v: v > 0, "a number > 0"),
    "teacher.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "teacher.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "teacher.augment_padding": (lambda v: v is None or v >= 0, "an integer >= 0, or null for the data set's"),
    "teacher.swa_epochs": (lambda v: v is None or v >= 1, "an integer >= 1, or null for no weight averaging"),
    "teacher.swa_lr": (lambda v: v is None or v > 0, "a number > 0, or null for lr / 5"),
    "generator.nz": (lambda v: v >= 1, "an integer >= 1"),
    "generator.ngf": (lambda v: v >= 1, "an integer >= 1"),
    "generator.members": (lambda v: v >= 1, "an integer >= 1"),
    "generator.lr": (lambda v: v > 0, "a number > 0"),
    "generator.embedding_lr_scale": (lambda v: v > 0, "a number > 0"),
    "generator.beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "generator.beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "loss.scl_temperature": (lambda v: v > 0, "a number > 0"),
    "loss.bn_first_layer_weight": (lambda v: v >= 0, "a number >= 0"),
    "loss.kd_temperature": (lambda v: v > 0, "a number > 0"),
    "loss.ce_feature_share": (lambda v: 0 < v <= 1, "a number in (0, 1] (1 = every generator's CE reads all "
                                                   "of the teacher's features)"),
    "distill.iterations": (lambda v: v >= 0, "an integer >= 0"),
    "distill.batch_size": (lambda v: v >= 2, "an integer >= 2 (BatchNorm and SupCon need pairs)"),
    "distill.g_steps": (lambda v: v >= 0, "an integer >= 0"),
    "distill.s_steps": (lambda v: v >= 1, "an integer >= 1"),
    "distill.student_lr": (lambda v: v > 0, "a number > 0"),
    "distill.student_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "distill.student_weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "distill.warmup_iterations": (lambda v: v >= 0, "an integer >= 0"),
    "distill.generator_warmup": (lambda v: v >= 0, "an integer >= 0"),
    "distill.memory_batches": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "distill.augment_padding": (lambda v: v is None or v >= 0, "an integer >= 0, or null for the data set's"),
    "distill.mixup": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1 (0 = off)"),
    "distill.affine": (lambda v: 0 <= v <= 1, "a fraction between 0 and 1 (0 = off)"),
    "distill.affine_scale": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "distill.affine_degrees": (lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]"),
    "distill.log_every": (lambda v: v >= 1, "an integer >= 1"),
    "distill.eval_every": (lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    "distill.sample_every": (lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    "distill.checkpoint_every": (lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    "distill.diagnostics_every": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    "distill.max_grad_norm": (lambda v: v >= 0, "a number >= 0 (0 = off)"),
}
for _name in ("adv", "kd", "ikd", "bn", "scl", "ce", "one_hot", "activation", "info_entropy", "attention", "tv"):
    _RULES[f"loss.{_name}"] = (lambda v: v >= 0, "a weight >= 0 (0 switches the term off)")
_RULES["loss.student_ce"] = (lambda v: v is None or v >= 0, "a weight >= 0, or null for the same as loss.ce")
_RULES["loss.student_ikd"] = (lambda v: v is None or v >= 0, "a weight >= 0, or null for the same as loss.ikd")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if _is_optional(tp):
        return f"{_describe(_non_none(tp))} or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _non_none(tp: Any) -> Any:
    return next(a for a in typing.get_args(tp) if a is not type(None))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted where floats are expected."""
    if _is_optional(tp):
        return None if value is None else _coerce(value, _non_none(tp), path)
    if typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if value == value and abs(value) != float("inf"):
                return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config field {path!r} must be {_describe(tp)}, got {value!r}")


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Recursively write ``updates`` into the dataclass ``obj``, refusing unknown keys and wrong types."""
    if not isinstance(updates, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '(top level)'!r} must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown config key {path!r}; valid keys here are: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{path}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def validate(config: Config) -> Config:
    """Check every range rule and the names that must exist (method, models, data set)."""
    for path, (ok, allowed) in _RULES.items():
        value = get_value(config, path)
        if not ok(value):
            raise UserError(f"config field {path!r} must be {allowed}, got {value!r}")
    from . import data, methods, models  # late import: these modules import config

    if config.data.name not in data.DATASETS:
        raise UserError(f"unknown data set {config.data.name!r}; valid data sets are: {', '.join(sorted(data.DATASETS))}")
    for path in ("teacher.arch", "student.arch"):
        if get_value(config, path) not in models.list_models():
            raise UserError(
                f"config field {path!r}: unknown model {get_value(config, path)!r}; valid models are: "
                f"{', '.join(models.list_models())}"
            )
    methods.get_recipe(config.distill.method)
    swa = config.teacher.swa_epochs
    if swa is not None and swa >= config.teacher.epochs:
        raise UserError(f"teacher.swa_epochs ({swa}) must be smaller than teacher.epochs ({config.teacher.epochs}): "
                        "the weights are averaged over the last swa_epochs epochs of the run")
    if config.distill.student_nesterov and config.distill.student_momentum == 0:
        raise UserError("distill.student_nesterov=true needs momentum: set distill.student_momentum > 0 "
                        "(e.g. 0.9) or distill.student_nesterov=false")
    if not (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:")):
        raise UserError(f"config field 'device' must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    return config


def get_value(config: Config, path: str) -> Any:
    obj: Any = config
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``"distill.iterations=100"`` into ``{"distill": {"iterations": 100}}`` (values parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like section.key=value, e.g. distill.iterations=100")
    path, raw = text.split("=", 1)
    path = path.strip()
    if not path or any(not part.isidentifier() for part in path.split(".")):
        raise UserError(f"override {text!r}: {path!r} is not a config key such as distill.iterations")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"override {text!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    nested: dict[str, Any] = {}
    node = nested
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset is a plain YAML file: a name from ``cpsc_dfkd/presets`` or a path to your own file."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            raise UserError(f"unknown preset {name!r}; valid presets are: {', '.join(list_presets())} (or a path to a .yaml file)")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"preset {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"preset {path} must be a mapping of config sections, got {type(loaded).__name__}")
    return loaded


def resolve(
    preset: str | None = None, overrides: list[str] | None = None, extra: dict[str, Any] | None = None
) -> Config:
    """Build a validated Config: defaults <- preset <- method recipe <- ``extra`` <- ``overrides``."""
    from .methods import get_recipe

    preset_dict = load_preset(preset) if preset else {}
    user = dict(extra or {})
    for text in overrides or []:
        user = _merge(user, parse_override(text))
    config = Config()
    _apply(config, preset_dict)
    probe = Config()
    _apply(probe, _merge(preset_dict, user))  # find the method the user finally asked for
    _apply(config, get_recipe(probe.distill.method).config_changes)
    _apply(config, user)
    return validate(config)


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config saved in a run directory (no recipe is re-applied: the values are final)."""
    config = Config()
    _apply(config, values)
    return validate(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
