"""Progress bars draw only on a terminal: a run whose stderr goes to a file or a pipe (logs, CI) gets no
carriage-return updates, one on a terminal still sees them."""
from __future__ import annotations

import ast
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _disable_is_none_off_a_terminal(call: ast.Call) -> bool:
    """``disable=None`` (tqdm: off when the stream is no terminal), or ``None if progress else True``."""
    for kw in call.keywords:
        if kw.arg == "disable":
            v = kw.value
            if isinstance(v, ast.Constant) and v.value is None:
                return True
            return isinstance(v, ast.IfExp) and isinstance(v.body, ast.Constant) and v.body.value is None
    return False


def test_every_progress_bar_is_quiet_off_a_terminal():
    made, loud = 0, []
    for path in sorted([*(ROOT / "fxdecomp").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name in ("tqdm", "trange"):
                    made += 1
                    if not _disable_is_none_off_a_terminal(node):
                        loud.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert made >= 8  # the scan sees the bars (decompose, align, verify, segmentation, training, ...)
    assert loud == [], f"tqdm without disable=None at {loud}"


def _decompose(tmp_path: Path, name: str, stderr) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TQDM_DISABLE", None)
    cmd = [sys.executable, "-m", "fxdecomp", "decompose", "world-vit", "world:8:3", "--out", str(tmp_path / name),
           "--batch", "4", "--shard-mb", "0.1", "--workers", "0", "--device", "cpu"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=tmp_path)


def test_a_command_with_stderr_piped_draws_no_progress_and_on_a_terminal_it_does(tmp_path):
    piped = _decompose(tmp_path, "piped", subprocess.PIPE)
    out, err = piped.communicate(timeout=600)
    assert piped.returncode == 0, err.decode()
    assert b"\r" not in err, err[:500]
    assert b"wrote" in out

    master, slave = pty.openpty()  # the same command with stderr on a terminal, 100 columns wide
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    seen = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    on_tty = _decompose(tmp_path, "tty", slave)
    os.close(slave)
    on_tty.communicate(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    assert on_tty.returncode == 0, bytes(seen).decode(errors="replace")
    assert b"\r" in seen and b"shard" in seen  # a bar was drawn, so the piped run's silence means something
