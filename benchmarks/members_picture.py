"""Picture of what each member of a generator ensemble (``generator.members=K``) makes, class by class.

One row per class; the row holds ``--per-member`` images of each member in turn. Every member makes a
class-balanced batch in training mode, as in the distillation loop.

    python benchmarks/members_picture.py benchmarks/results/fashion-mnist/cpsc-dfkd-seed0 docs/fashion-mnist-members.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from cpsc_dfkd.data import dataset_info, denormalise
from cpsc_dfkd.distill import generator_for
from cpsc_dfkd.errors import UserError
from cpsc_dfkd.experiment import config_for_resume
from cpsc_dfkd.models import GeneratorEnsemble
from cpsc_dfkd.runs import load_checkpoint


def members_grid(generator: GeneratorEnsemble, nz: int, num_classes: int, per_member: int, seed: int = 1
                 ) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(per_member * num_classes) % num_classes
    generator.train()
    with torch.no_grad():
        made = [member(torch.randn(len(labels), nz, generator=rng), labels) for member in generator.members]
    rows = [torch.cat([images[labels == c] for images in made]) for c in range(num_classes)]
    return torch.cat(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a distillation run directory made with generator.members > 1")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--per-member", type=int, default=4, help="images of each member per class")
    args = p.parse_args(argv)
    try:
        config = config_for_resume(args.run_dir)
        g = config.generator
        if g.members < 2 or not g.conditional:
            raise UserError(f"{args.run_dir} was made with generator.members={g.members}, "
                            f"conditional={g.conditional}; this picture needs a conditional ensemble (members >= 2)")
        checkpoint = Path(args.run_dir) / "checkpoints" / "last.pt"
        if not checkpoint.exists():
            raise UserError(f"{checkpoint} does not exist; the run saved no checkpoint (distill.checkpoint_every=0?)")
        info = dataset_info(config.data.name)
        generator = generator_for(config)
        generator.load_state_dict(load_checkpoint(checkpoint)["generator"])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = members_grid(generator, g.nz, info.num_classes, args.per_member)
    grid = make_grid(denormalise(images, info), nrow=args.per_member * g.members, padding=2, pad_value=1.0)
    save_image(grid, args.out)
    print(f"wrote {args.out}: {info.num_classes} classes x {g.members} members x {args.per_member} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
