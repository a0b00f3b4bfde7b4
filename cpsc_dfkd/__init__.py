"""cpsc-dfkd: conditional pseudo-supervised contrast for data-free knowledge distillation."""

__version__ = "0.1.0"
