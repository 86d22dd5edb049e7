"""A run store read in CLIP space: its contributions with their CLIP embeddings, the aligners
``fxdecomp align`` trained for it, the CLIP space they map into, and batches for training.

The store owns the run's files (paths, records, shards); what builds align's types from them is
here, so the store never imports align. The batches themselves are ``RunBatches`` (align.batches).
"""
from __future__ import annotations

from ..errors import InputError
from ..store.files import ALIGNER_RECORD, DamagedFile
from ..store.run import Run
from .batches import RunBatches
from .clip_space import ClipSpace
from .compalign import CompAlign
from .features import Features, materialise


def run_features(run: Run, clip: str | None = None) -> Features:
    """Everything in memory as ``Features`` (with the run's CLIP embeddings named ``clip``)."""
    return materialise(RunBatches(run, clip))


def run_aligner(run: Run) -> CompAlign:
    """The per-component maps ``fxdecomp align`` trained for ``run`` (what descriptions read)."""
    run.require_full("an aligner (CompAlign maps contributions of the output's width)")
    if not run.aligner_path().is_file():
        raise InputError(f"{run.path} has no aligner yet: run fxdecomp align {run.path} --clip ...")
    fix = f"run fxdecomp align {run.path} --clip ... --overwrite to train it again"
    if (run.path / ALIGNER_RECORD).is_file():
        run.check_recorded(run.aligner_path(), run.aligner_record(), fix)
    try:
        return CompAlign.load(run.aligner_path(), components=run.components, d_model=run.d_model)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        raise InputError(f"{run.aligner_path()} cannot be read ({type(err).__name__}: {err}); {fix}") from None


def run_shared_aligner(run: Run) -> CompAlign:
    """The shared map (one map for every component, λ = 0) ``fxdecomp align`` trained beside the
    per-component maps: what every ranking of the run's components reads (docs/ALIGN.md). A run
    aligned before ``align`` trained it has none, and is refused: ranking by the per-component
    maps instead would be silently unsound."""
    run.require_full("the shared map (CompAlign maps contributions of the output's width)")
    path = run.shared_aligner_path()
    clip = "..."
    if (run.path / ALIGNER_RECORD).is_file():
        clip = run.aligner_record().get("clip", clip)
    if not path.is_file():
        if not run.aligner_path().is_file():
            raise InputError(f"{run.path} has no aligner yet: run fxdecomp align {run.path} --clip ...")
        raise InputError(f"{run.path} has no shared map, which rankings of its components read (runs aligned "
                         f"before fxdecomp align trained one have none): run fxdecomp align {run.path} --clip "
                         f"{clip} --shared-only to add it (the per-component maps stay), or --overwrite to "
                         "train both again")
    fix = f"run fxdecomp align {run.path} --clip {clip} --shared-only --overwrite to train it again"
    rec = run.aligner_record(shared=True)
    if rec:
        run.check_recorded(path, rec, fix)
    try:
        shared = CompAlign.load(path, components=run.components, d_model=run.d_model)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        raise InputError(f"{path} cannot be read ({type(err).__name__}: {err}); {fix}") from None
    if shared.variant != "shared":
        raise InputError(f"{path} holds {shared.variant} maps, not the shared map; {fix}")
    if rec.get("clip") is not None and clip != "..." and rec["clip"] != clip:
        raise InputError(f"{path} maps into CLIP {rec['clip']!r} but the run's aligner into {clip!r}; {fix}")
    return shared


def run_clip_space(run: Run, checkpoint=None) -> ClipSpace | None:
    """The CLIP space the run's aligner maps into (None before ``fxdecomp align``); ``checkpoint``
    overrides the local weights file recorded when it was aligned."""
    info = run.path / ALIGNER_RECORD
    if not info.is_file():
        return None
    rec = run.aligner_record()
    if not isinstance(rec.get("clip"), str):
        raise DamagedFile(f"{info} is damaged (it names no CLIP); run fxdecomp align {run.path} --clip ... "
                          "--overwrite to write it again")
    return ClipSpace.by_name(rec["clip"], checkpoint=checkpoint or rec.get("checkpoint"))


def run_batches(run: Run, clip: str, batch_size: int = 32, shuffle_seed: int | None = 0) -> RunBatches:
    """Re-iterable (contributions, CLIP targets) batches of ``run`` for training CompAlign in bounded memory."""
    return RunBatches(run, clip, batch_size, shuffle_seed)
