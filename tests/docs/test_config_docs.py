"""docs/configuration.md lists every option exactly as MeshConfig defines it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_option_table_is_generated_from_the_dataclass():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_config_docs.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text()
    assert gen.render(text) == text, "run: python scripts/gen_config_docs.py"
    for f in gen.MeshConfig.fields():
        assert gen.MeshConfig.env_name(f.name) in text
