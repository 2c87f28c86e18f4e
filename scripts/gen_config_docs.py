"""Regenerate the option table of docs/configuration.md from MeshConfig.

``python scripts/gen_config_docs.py`` rewrites the table between the
``<!-- options:begin -->`` / ``<!-- options:end -->`` markers; the test
``tests/docs/test_config_docs.py`` fails when the file is out of date, so the
dataclass stays the one source of truth for kwargs, env vars, flags and docs.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshadapter.config import MeshConfig  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def field_docs() -> dict[str, str]:
    """The ``#:`` comment above each field, as Sphinx autodoc reads it."""
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(MeshConfig).splitlines():
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"^(\w+): ", s)
        if m and pending:
            docs[m.group(1)] = " ".join(pending).replace("``", "`")
        pending = []
    return docs


def table() -> str:
    docs = field_docs()
    rows = ["| option (keyword) | environment variable | CLI flag | default | meaning |",
            "|---|---|---|---|---|"]
    for f in MeshConfig.fields():
        rows.append(f"| `{f.name}` | `{MeshConfig.env_name(f.name)}` | "
                    f"`--{f.name.replace('_', '-')}` | `{f.default!r}` | {docs.get(f.name, '')} |")
    return "\n".join(rows)


def render(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC}")
