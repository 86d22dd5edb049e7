"""The ``fxdecomp`` commands, one module each: ``add(subparsers)`` declares it, ``run(args)`` does it (set as ``handler``)."""
from . import align, decompose, demo, explain, heatmap, retrieve, segment, spurious, verify

COMMANDS = (demo, decompose, align, explain, spurious, segment, retrieve, heatmap, verify)
