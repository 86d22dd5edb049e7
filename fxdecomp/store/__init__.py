"""Run stores: a data set decomposed once, on disk, in shards, read back lazily.

``decompose_to_store(model, data, out)`` writes a run (resumable, one or many processes, one writer
per folder); ``open_run(path)`` reads it: ``run.component(name)``, ``run.images(idx)``,
``run.shards()``; ``verify_run(path)`` (``fxdecomp verify``) checks every file against the manifest.
``decompose_to_store(..., readout=R)`` stores every contribution read through ``R`` ([N, C, K]); such
a run records its readout (``run.readout``) and is refused by what needs the output's width
(docs/READOUTS.md, Runs). What reads a run in CLIP space (its aligners, batches for CompAlign,
rankings through its shared map) is in ``fxdecomp.align``, above the store. See ``fxdecomp decompose
--help`` and docs/RELIABILITY.md.
"""
from .build import DTYPES, Progress, classifier_of, decompose_to_store
from .manifest import differences
from .run import Run, open_run
from .verify import verify_run

__all__ = ["DTYPES", "Progress", "Run", "classifier_of", "decompose_to_store", "differences", "open_run", "verify_run"]
