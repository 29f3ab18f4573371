"""The docs site builds strictly, and a broken link or a missing page fails the build."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs")


def build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                           str(root / "mkdocs.yml"), "-d", str(root / "site")], capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_docs_build_strictly_and_fail_on_a_broken_link_or_missing_page(tmp_path):
    site = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", site / "docs")
    shutil.copy(ROOT / "mkdocs.yml", site / "mkdocs.yml")
    (site / "src").symlink_to(ROOT / "src")  # the API page is generated from the docstrings
    (site / "mkdocs.yml").write_text((site / "mkdocs.yml").read_text().replace("site_dir: build/site\n", ""))
    assert build(site).returncode == 0, build(site).stderr
    text = (site / "docs" / "pools.md").read_text()
    (site / "docs" / "pools.md").write_text(text + "\nSee [nowhere](missing.md).\n")
    result = build(site)
    assert result.returncode != 0 and "missing.md" in result.stderr
    (site / "docs" / "pools.md").write_text(text + "\nSee [an anchor](scoring.md#no-such-heading).\n")
    assert build(site).returncode != 0
    (site / "docs" / "pools.md").write_text(text)
    (site / "docs" / "scaling.md").unlink()
    assert build(site).returncode != 0


def test_the_api_page_lists_every_public_function():
    import taskdiv

    text = (ROOT / "docs" / "api.md").read_text()
    members = text.split("members: [", 1)[1].split("]", 1)[0].replace(" ", "").split(",")
    functions = [n for n in taskdiv.__all__ if n[0].islower() and not n.startswith("_")]
    assert sorted(members) == sorted(functions)
