"""What ``--readout SPEC`` names: a matrix in a file, the model's own classifier rows, or texts read
through an aligned run's CompAlign maps; each becomes the ``readout=`` of ``decompose_to_store``.

* ``FILE.safetensors`` (one tensor, or the key ``R``) or ``FILE.pt`` (a tensor, or a dict with ``R``):
  a [D, K] matrix, its columns unnamed;
* ``classes``: the last Linear of the model's head, [D, classes], the columns named by class when the
  model says its classes' names;
* ``texts:FILE`` (one description per line) with ``--clip`` and ``--aligner RUN``: each component read
  through its CompAlign map composed with the texts' embeddings (``aligner.readout(texts, clip=)``),
  the columns named by the texts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError

FIX = ("give --readout FILE.safetensors or FILE.pt (a [D, K] matrix), classes (the model's classifier rows), "
       "or texts:FILE with --clip and --aligner RUN")


@dataclass
class Readout:
    """A resolved ``--readout``: the matrix (or one per component), how it was given, the columns' names."""

    matrix: object
    spec: str
    names: list[str] | None


def check_spec(spec: str | None, args) -> None:
    """What can be checked before the model is loaded: the spec's form, its file, --clip and --aligner."""
    clip, aligner = getattr(args, "clip", None), getattr(args, "aligner", None)
    if getattr(args, "clip_checkpoint", None) is not None and clip is None:
        raise InputError("--clip-checkpoint gives the weights of --clip: add --clip NAME (with --readout texts:FILE), "
                         "or drop it")
    if spec is None:
        if clip is not None or aligner is not None:
            raise InputError("--clip and --aligner go with --readout texts:FILE (they embed and map its texts); "
                             "drop them, or add --readout texts:FILE")
        return
    if spec.startswith("texts:"):
        path = Path(spec[len("texts:"):])
        if not path.is_file():
            raise InputError(f"--readout {spec}: no file {path}; give a text file with one description per line")
        if clip is None or aligner is None:
            raise InputError(f"--readout {spec} needs --clip NAME (to embed the texts) and --aligner RUN (an aligned "
                             "head-granularity run of the same model, whose CompAlign maps read them)")
        return
    if clip is not None or aligner is not None:
        raise InputError("--clip and --aligner go with --readout texts:FILE only; drop them")
    if spec == "classes":
        return
    path = Path(spec)
    if path.suffix.lower() not in (".safetensors", ".pt", ".pth"):
        raise InputError(f"--readout {spec!r} is not a readout: {FIX}")
    if not path.is_file():
        raise InputError(f"--readout {spec}: no such file; {FIX}")


def resolve(spec: str, model: torch.nn.Module, model_name: str, args) -> Readout:
    """The readout ``spec`` names, for ``model`` (the loaded model, whose classifier ``classes`` reads)."""
    check_spec(spec, args)
    if spec == "classes":
        return _classes(model, model_name)
    if spec.startswith("texts:"):
        return _texts(Path(spec[len("texts:"):]), model_name, args)
    path = Path(spec)
    return Readout(_matrix_file(path), f"{path.resolve()}", None)


def _matrix_file(path: Path) -> torch.Tensor:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors' own error types
            raise InputError(f"--readout {path} cannot be read as safetensors ({type(err).__name__}: {err})") from None
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch's own error types
            raise InputError(f"--readout {path} cannot be read with torch.load ({type(err).__name__}); save the "
                             "matrix with torch.save(R, path)") from None
        tensors = obj if isinstance(obj, dict) else {"R": obj}
    if "R" in tensors:
        r = tensors["R"]
    elif len(tensors) == 1:
        r = next(iter(tensors.values()))
    else:
        raise InputError(f"--readout {path} holds {sorted(tensors)[:6]}: store one tensor, or name the readout 'R'")
    if not isinstance(r, torch.Tensor) or r.dim() != 2:
        shape = list(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise InputError(f"--readout {path} holds {shape}, not a [D, K] matrix (one column per direction read)")
    return r


def _classes(model: torch.nn.Module, model_name: str) -> Readout:
    from ..store.build import classifier_of

    head = classifier_of(model)
    if head is None:
        raise InputError(f"--readout classes reads the model's classifier rows, but {model_name} has no linear "
                         "classifier (a CLIP tower, or a timm model without --num-classes): give --num-classes N "
                         "with a checkpoint that has a classifier, or a matrix file as --readout")
    w = head.weight.detach().float().T.contiguous()  # [D, classes]: logit k minus its bias is x @ w[:, k]
    return Readout(w, "classes", class_names(model, w.shape[1]))


def class_names(model: torch.nn.Module, k: int) -> list[str] | None:
    """The names of a classifier's ``k`` classes, when the model says them (None otherwise)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if isinstance(names, (list, tuple)) and len(names) == k:
        return [str(n) for n in names]
    from ..world.attributes import CATEGORICAL
    from ..world.models import N_ATTRIBUTE_LOGITS

    if str(cfg.get("architecture", "")).startswith("world-") and k == N_ATTRIBUTE_LOGITS:
        return [f"{attr}={value}" for attr, values in CATEGORICAL.items() for value in values]
    return None


def _texts(path: Path, model_name: str, args) -> Readout:
    from ..align.clip_space import ClipSpace
    from ..store import open_run

    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise InputError(f"--readout texts:{path} holds no descriptions; write one per line")
    run = open_run(args.aligner)
    if run.model_name != model_name:
        raise InputError(f"--aligner {args.aligner} was decomposed from {run.model_name}, not {model_name}: its "
                         f"maps read another model's components; align a run of {model_name} and give it")
    if run.granularity != "head":
        raise InputError(f"--aligner {args.aligner} is a {run.granularity}-granularity run; give an aligned "
                         "head-granularity run (its per-head maps read every head's and token's contributions)")
    from ..align import run_aligner

    aligner = run_aligner(run)
    clip = ClipSpace.by_name(args.clip, checkpoint=getattr(args, "clip_checkpoint", None))
    if getattr(aligner, "clip_name", None) and aligner.clip_name != clip.name:
        raise InputError(f"--aligner {args.aligner} maps into {aligner.clip_name}, not {clip.name}: pass --clip "
                         f"{aligner.clip_name}, the CLIP its maps were trained for")
    readout = aligner.readout(texts, clip=clip)
    spec = f"texts:{path.resolve()} --clip {args.clip} --aligner {Path(args.aligner).resolve()}"
    return Readout(readout, spec, texts)
