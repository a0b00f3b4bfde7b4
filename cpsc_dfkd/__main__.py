"""``python -m cpsc_dfkd ...`` (and ``torchrun -m cpsc_dfkd distill ...``) run the CLI."""
import sys

from .cli import main

sys.exit(main())
