"""Every code snippet in README.md and docs/*.md is exercised.

* ``python`` blocks are executed, each in a fresh interpreter with a deadline,
  with the repository on ``sys.path`` and the mesh bound to loopback
  (``MESHADAPTER_HOST=127.0.0.1``) so that nothing leaves the machine.
* ``sh`` blocks are checked command by command: ``meshadapter ...`` lines
  are parsed by the real CLI parser, ``python -m bench ...`` by the
  benchmark's parser, ``bash scripts/...`` must name an existing script.
  Other commands must be in :data:`EXTERNAL` (tools this project does not
  own, e.g. ``haproxy``); they are not run here — the CI run itself runs
  ``scripts/setup.sh`` and ``scripts/test.sh``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
EXTERNAL = {"pip", "sudo", "systemctl", "docker", "kubectl", "gunicorn", "uvicorn", "haproxy",
            "nginx", "curl", "redis-server", "npm", "node", "cd", "export", "git", "journalctl"}


def snippets(lang: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for i, m in enumerate(FENCE.finditer(doc.read_text())):
            if m.group(1) == lang:
                out.append((f"{doc.relative_to(ROOT)}#{i}", m.group(2)))
    return out


PY = snippets("python")
SH = snippets("sh") + snippets("bash") + snippets("shell")


def test_there_are_snippets_to_check():
    assert len(PY) >= 3 and len(SH) >= 2


@pytest.mark.parametrize("name, code", PY, ids=[n for n, _ in PY])
def test_python_snippet_runs(name: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESHADAPTER_HOST": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, f"{name} failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"


def _commands(code: str) -> list[list[str]]:
    cmds = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words:
                cmds.append(words)
    return cmds


@pytest.mark.parametrize("name, code", SH, ids=[n for n, _ in SH])
def test_shell_snippet_commands_are_valid(name: str, code: str) -> None:
    from meshadapter.cli import build_parser

    for words in _commands(code):
        prog = words[0]
        if prog == "meshadapter" or words[:3] == ["python", "-m", "meshadapter"]:
            argv = words[1:] if prog == "meshadapter" else words[3:]
            try:
                build_parser().parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{name}: `{' '.join(words)}` is not a valid command ({exc})")
        elif words[:3] in (["python", "-m", "bench"], ["python3", "-m", "bench"]):
            from bench.__main__ import parse_args

            try:
                parse_args(words[3:])
            except SystemExit as exc:
                pytest.fail(f"{name}: `{' '.join(words)}` is not valid ({exc})")
        elif prog == "bash":
            assert (ROOT / words[1]).exists(), f"{name}: {words[1]} does not exist"
        elif prog in ("python", "python3"):
            target = words[1] if len(words) > 1 else ""
            assert target == "-m" or (ROOT / target).exists(), f"{name}: {' '.join(words)}"
        else:
            assert prog in EXTERNAL, f"{name}: unknown command {prog!r} in a doc snippet"
