"""``python -m fxdecomp`` (what ``torchrun -m fxdecomp`` runs)."""
import sys

from .cli import main

sys.exit(main())
