"""Checking a run against what it records: the manifest's own consistency (its shards cover every
image exactly once), each shard file's size, header and SHA-256, and the files ``fxdecomp align``
adds. A damaged or missing shard is recomputed by the command that wrote the run, which the run
records; ``fxdecomp verify RUN`` runs every check and names that command.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..hashing import json_digest
from .files import MANIFEST, RUN, DamagedFile, read_json, sha256

#: safetensors' names of the dtypes a run stores
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
MAX_HEADER = 1 << 26
#: stands for the run folder in the command a run records
RUN_PLACEHOLDER = "{run}"


def repair(config: dict | None, folder) -> str:
    """How to recompute what is missing or damaged in a run: run the command that wrote it (which it records)."""
    cmd = (config or {}).get("command")
    if not cmd or not isinstance(cmd, list):
        return "call decompose_to_store(...) again with the arguments that wrote the run"
    return "run `" + shlex.join(str(folder) if a == RUN_PLACEHOLDER else str(a) for a in cmd) + "`"


def settings_of(folder: Path) -> dict | None:
    """``run.json`` of ``folder``, or None when it is missing or damaged."""
    try:
        return read_json(folder / RUN)
    except (OSError, DamagedFile):
        return None


def check_manifest(m: dict, folder: Path) -> None:
    """Raise ``DamagedFile`` unless ``m`` has what readers use and its shards cover images 0..n-1 exactly
    once, in plan order, each with a size and a checksum."""
    def bad(why: str):
        raise DamagedFile(f"{folder / MANIFEST} is damaged ({why}); {repair(settings_of(folder) or m, folder)} "
                          "to write it again")

    try:
        n, d, size = m["data"]["n"], m["d_model"], m["shard_images"]
        table, shards, ids, labels = m["component_table"], m["shards"], m["images"]["ids"], m["images"]["labels"]
        names = [c["name"] for c in table]
        m["model"]["name"], m["granularity"], m["reconstruction"]["max_relative_error"]
        dtype = m["dtype"]
    except (KeyError, TypeError, IndexError) as err:
        bad(f"it lacks {err}")
    for key, value in (("data.n", n), ("d_model", d), ("shard_images", size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(f"{key} is {value!r}, not a positive whole number")
    if dtype not in SAFETENSORS_DTYPES:
        bad(f"unknown dtype {dtype!r}")
    if not isinstance(ids, list) or len(ids) != n:
        bad(f"it lists {len(ids) if isinstance(ids, list) else 'no'} image ids for {n} images")
    if not isinstance(labels, dict) or any(not isinstance(v, list) or len(v) != n for v in labels.values()):
        bad(f"its labels do not have one value per image ({n})")
    if json_digest(names) != m.get("components"):
        bad("its component table does not match the components' digest")
    if not isinstance(shards, list):
        bad("shards is not a list")
    start = 0
    for i, s in enumerate(shards):
        if not isinstance(s, dict):
            bad(f"shard {i} is {type(s).__name__}, not a record")
        if s.get("shard") != i or s.get("file") != f"shards/{i:05d}.safetensors":
            bad(f"entry {i} names shard {s.get('shard')!r} in {s.get('file')!r}")
        if s.get("start") != start or s.get("stop") != min(n, start + size):
            bad(f"shard {i} holds images {s.get('start')!r}..{s.get('stop')!r}, but the plan puts "
                f"{start}..{min(n, start + size)} there: the shards must cover images 0..{n - 1} exactly once")
        if not isinstance(s.get("bytes"), int) or not isinstance(s.get("sha256"), str):
            bad(f"shard {i} has no size or checksum")
        digests = s.get("digests")
        if digests is not None and (not isinstance(digests, list) or len(digests) != s["stop"] - start):
            bad(f"shard {i} does not record one image digest per image")
        start = s["stop"]
    if start != n:
        bad(f"its shards cover images 0..{start - 1}, not 0..{n - 1}")
    readout = m.get("readout")
    if readout is not None:
        k = readout.get("k") if isinstance(readout, dict) else None
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            bad(f"its readout record has K = {k!r}, not a positive whole number")
        names = readout.get("names")
        if names is not None and (not isinstance(names, list) or len(names) != k):
            bad(f"its readout record does not name its {k} columns one by one")


def expected_tensors(m: dict, info: dict) -> dict[str, tuple[str, list[int]]]:
    """What a shard file must hold: name -> (safetensors dtype, shape)."""
    from .readouts import width_of

    k, dt, w = info["stop"] - info["start"], SAFETENSORS_DTYPES[m["dtype"]], width_of(m)
    return {"contributions": (dt, [k, len(m["component_table"]), w]), "output": (dt, [k, w]),
            "index": ("I64", [k])}


def header_problem(path: Path, expect: dict[str, tuple[str, list[int]]], size: int) -> str | None:
    """What is wrong with a safetensors file's header (None if it is what ``expect`` says and fills the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER, size - 8):
                return "its header is damaged (its length is wrong)"
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "its header is damaged (not valid JSON)"
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    if not isinstance(header, dict):
        return "its header is damaged (not a JSON object)"
    header.pop("__metadata__", None)
    if set(header) != set(expect):
        return f"it holds {sorted(header)}, not {sorted(expect)}"
    end = 0
    for name, (dtype, shape) in sorted(expect.items(), key=lambda kv: _offset(header[kv[0]])):
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype or entry.get("shape") != shape:
            return f"its header is damaged or not a shard's: {name!r} is {_describe(entry)}, not {dtype} {shape}"
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[0] == end):
            return f"its header is damaged ({name!r} has offsets {offsets!r})"
        end = offsets[1]
    if 8 + n + end != size:
        return f"its header describes {8 + n + end} bytes, but the file has {size}"
    return None


def _offset(entry) -> int:
    try:
        return int(entry["data_offsets"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        return -1


def _describe(entry) -> str:
    if isinstance(entry, dict):
        return f"{entry.get('dtype')} {entry.get('shape')}"
    return repr(entry)[:40]


def file_problem(path: Path, size: int | None, digest: str | None, *, checksum: bool = True) -> str | None:
    """'missing', a wrong size or a wrong SHA-256 of a file the run records (None if it is intact)."""
    try:
        have = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size is not None and have != size:
        return f"{have} bytes, the run recorded {size}"
    if checksum and digest is not None and sha256(path) != digest:
        return "its SHA-256 differs from the one recorded (its data changed)"
    return None


def shard_problem(folder: Path, m: dict, info: dict, *, checksum: bool) -> str | None:
    """What is wrong with the shard ``info`` describes: missing, size, header, and (``checksum``) data."""
    path = folder / info["file"]
    problem = file_problem(path, info["bytes"], None, checksum=False)
    if problem is None:
        problem = header_problem(path, expected_tensors(m, info), info["bytes"])
    if problem is None and checksum and sha256(path) != info["sha256"]:
        problem = "its SHA-256 differs from the manifest's (its data changed)"
    return problem


@dataclass
class Problem:
    file: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


def verify_run(folder, *, images: bool = False, progress: bool = False) -> tuple[list[str], list[Problem]]:
    """Every check of a run folder: (what was checked, what is wrong). ``images``: the data's files too."""
    from tqdm.auto import tqdm

    from ..errors import InputError
    from .run import open_run

    folder = Path(folder)
    try:
        run = open_run(folder)
    except InputError as err:
        return [], [Problem(str(folder), str(err), "")]
    m, fix = run.manifest, repair(settings_of(folder) or run.manifest, folder)
    checked, problems = [], []
    for info in tqdm(m["shards"], disable=None if progress else True, desc="verify shards", unit="shard",
                     leave=False):
        checked.append(info["file"])
        problem = shard_problem(folder, m, info, checksum=True)
        if problem is None:
            side = read_sidecar(folder, info["shard"])
            if side != info:
                problem = f"its sidecar shards/{info['shard']:05d}.json does not match the manifest"
        if problem is not None:
            problems.append(Problem(info["file"], problem, fix))
    for name, size, digest, how in run.recorded_files():
        checked.append(name)
        problem = file_problem(folder / name, size, digest)
        if problem is not None:
            problems.append(Problem(name, problem, how))
    if images:
        checked.append("the images")
        try:
            run.data(verify=True, progress=progress)
        except InputError as err:
            problems.append(Problem("images", str(err), ""))
    return checked, problems


def read_sidecar(folder: Path, i: int) -> dict | None:
    try:
        return read_json(folder / "shards" / f"{i:05d}.json")
    except (OSError, DamagedFile):
        return None
