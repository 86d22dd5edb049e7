"""``fxdecomp verify RUN``: every file of a run checked against what the run records."""
from __future__ import annotations

from .common import formatter, renamed

HELP = "check every file of a run against its manifest (sizes, headers, SHA-256) and name the repair"
EPILOG = """examples:
  fxdecomp verify runs/vit
  fxdecomp verify runs/deit --check-images   # the data's files too: still the images the run decomposed?

Checks that the manifest's shards cover every image exactly once, and each shard's size, header,
SHA-256 and sidecar, the classifier head, the CLIP embeddings and the aligner. Exit code 0 when all
is intact; otherwise 2, with each damaged file listed and the command that repairs it (damaged or
missing shards: the fxdecomp decompose command that wrote the run, which recomputes only them)."""


def add(sub) -> None:
    p = sub.add_parser("verify", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run folder written by fxdecomp decompose")
    p.add_argument("--check-images", action="store_true", help="also read every image again and compare its digest")
    renamed(p, "--images", "--check-images", dest="check_images", flag_value=True)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..errors import InputError
    from ..store.verify import verify_run

    checked, problems = verify_run(args.run, images=args.check_images, progress=True)
    if not problems:
        print(f"{args.run}: intact ({len(checked)} files checked: sizes, headers and SHA-256"
              + (", and every image's content" if args.check_images else "") + ")")
        return 0
    if not checked:  # the run could not even be opened: its own message says why
        raise InputError(str(problems[0].what))
    for p in problems:
        print(f"damaged: {p}" + (f" (repair: {p.fix})" if p.fix else ""))
    fixes = list(dict.fromkeys(p.fix for p in problems if p.fix))
    raise InputError(f"{len(problems)} of {len(checked)} checked files of {args.run} are damaged or missing ("
                     + ", ".join(p.file for p in problems[:3]) + (", ..." if len(problems) > 3 else "") + ")"
                     + (f"; repair: {'; '.join(fixes)}" if fixes else ""))
