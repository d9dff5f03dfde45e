"""The README's Python example runs as written on the embedded models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from pipelines.embedded import PLACEHOLDER_ENV, assets_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (assets_dir() / "base" / "model_index.json").is_file(), reason="the embedded models are not in assets/"
)
def test_readme_python_example_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(PLACEHOLDER_ENV, raising=False)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    example = Image.open(sorted((ROOT / "assets" / "examples").glob("*.png"))[0]).convert("RGB")
    namespace = {"reference_image": example, "still": example}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert len(namespace["views"]) == 6
    assert len(namespace["frames"]) == 8
    assert namespace["image"].size == (32, 32)
