"""The documentation site (mkdocs.yml, docs/): built offline with warnings as errors
(broken links inside the site fail it), its reference pages equal to what the code
generates, every Freehold manifest in it valid as the API server would judge it, and its
landing page rendered in headless Chromium and checked on the screenshot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from freehold.docs_reference import pages
from freehold.validation import validate
from tests.chromium import pixels_near, screenshot
from tests.paths import ROOT

DOCS = ROOT / "docs"
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)
EXAMPLE = re.compile(r"\bexamples/[A-Za-z0-9_.-]+\.yaml\b")


def test_reference_pages_are_what_the_code_generates() -> None:
    for name, text in pages().items():
        committed = DOCS / "reference" / name
        assert committed.read_text(encoding="utf-8") == text, (
            f"docs/reference/{name} drifted from the code: "
            "python -m freehold.docs_reference docs/reference"
        )


def written_manifests() -> list[tuple[str, dict[str, object]]]:
    """Freehold manifests written out in the pages (tests/e2e also has the API server
    admit them)."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in BLOCK.findall(page.read_text(encoding="utf-8")):
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("freehold."):
                    found.append((str(page.relative_to(ROOT)), doc))
    return found


def test_every_manifest_in_the_docs_is_valid() -> None:
    """Manifests written in the pages, and every examples/ file a page names: present,
    and valid as the API server would judge them (schema and CEL)."""
    checked = 0
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        documents = [d for block in BLOCK.findall(text) for d in yaml.safe_load_all(block)]
        for name in sorted(set(EXAMPLE.findall(text))):
            example = ROOT / name
            assert example.exists(), f"{page.relative_to(ROOT)} names {name}, which is gone"
            documents += list(yaml.safe_load_all(example.read_text(encoding="utf-8")))
        for doc in documents:
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("freehold."):
                errors = validate(doc)
                assert not errors, f"{page.relative_to(ROOT)}: {[str(e) for e in errors]}"
                checked += 1
    assert checked >= 10, checked


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).with_suffix("")
        folder = relative.parent if relative.name == "index" else relative
        html = site / folder / "index.html"
        assert html.exists(), f"{page} was not built"
    landing = (site / "index.html").read_text(encoding="utf-8")
    assert "Own your AI stack" in landing and "reference/modelrouter/" in landing


def test_the_landing_page_renders_with_its_theme(site: Path, tmp_path: Path) -> None:
    image = screenshot(site / "index.html", tmp_path / "landing.png", width=1200, height=900)
    header = pixels_near(image, "#4051b5")  # Material's indigo header bar
    assert header > 1200 * 40, f"no themed header ({header} px): the theme's CSS did not load"
    ink = sum(1 for px in image.getdata() if max(px) < 90)
    assert ink > 5000, "the page has almost no text on it"


MARKED = re.compile(r"<!-- test: (transcript|run|run with vault) -->\n```\w*\n(.*?)```", re.S)


def _marked() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for how, block in MARKED.findall(page.read_text(encoding="utf-8")):
            found.append((str(page.relative_to(ROOT)), how, block))
    return found


def _environment(extra: dict[str, str]) -> dict[str, str]:
    import os

    bin_dir = str(Path(sys.executable).parent)  # `freehold` is the project's own
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "COLUMNS": "200",
            **extra}  # fmt: skip


@pytest.mark.parametrize(("page", "how", "block"), _marked(), ids=lambda v: str(v)[:40])
def test_commands_in_the_docs_run_as_written(
    page: str, how: str, block: str, tmp_path: Path
) -> None:
    """Blocks marked `<!-- test: run -->` run (exit 0) in a scratch directory, `run with
    vault` against tests/vault_server.py (the Vault stand-in: Vault cannot be installed
    here); `transcript` blocks run each `$ ` line in the repository and must print what
    the page shows (`...` stands for any lines)."""
    if how == "transcript":
        command, *expected = block.rstrip("\n").split("\n")
        assert command.startswith("$ "), f"{page}: a transcript starts with `$ `"
        done = subprocess.run(
            ["bash", "-c", command[2:]], cwd=ROOT, capture_output=True, text=True,
            check=False, timeout=300, env=_environment({}),
        )  # fmt: skip
        printed = (done.stdout + done.stderr).rstrip("\n").split("\n")
        pattern = "\n".join(".*?" if line == "..." else re.escape(line) for line in expected)
        assert re.fullmatch(pattern, "\n".join(printed), re.S), (page, printed)
        return
    model = tmp_path / "model.gguf"  # `MODEL`: a small file standing in for a model
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    extra: dict[str, str] = {"MODEL": str(model)}
    server = None
    if how == "run with vault":
        from tests.vault_server import VaultServer

        server = VaultServer().__enter__()
        extra |= {"VAULT_ADDR": server.url, "VAULT_TOKEN": server.state.root_token}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True,
            text=True, check=False, timeout=300, env=_environment(extra),
        )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
    assert done.returncode == 0, f"{page}:\n{block}\n{done.stdout}\n{done.stderr}"


def test_every_metric_the_dashboards_and_alerts_use_is_in_the_reference() -> None:
    """The generated reference is complete enough to read the chart's dashboards and
    alerts by: every freehold_* and gen_ai_* series they query is listed."""
    listed = set(re.findall(r"`((?:freehold|gen_ai)_[a-z_]+)`", pages()["telemetry.md"]))
    chart = ROOT / "charts" / "freehold"
    used = set()
    for path in [*chart.glob("dashboards/*.json"), *chart.glob("alerts/*.yaml")]:
        text = path.read_text(encoding="utf-8")
        # Series names, not label names (`up{freehold_component="..."}`).
        used |= set(re.findall(r"\bfreehold_[a-z_]+\b(?!\s*=)", text))
        used |= set(re.findall(r"\bgen_ai_(?:server|client)_[a-z_]+", text))
    bare = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    missing = sorted(name for name in bare if name not in listed)
    assert not missing, f"used by the chart, missing from docs/reference/telemetry.md: {missing}"


def test_the_docs_name_freehold_ups_data_directory_as_the_code_does() -> None:
    """An outside test found wrong local paths in the docs: `freehold up` keeps its state
    in its data directory, whose default the docs state as the settings define it."""
    from freehold.settings import LocalSettings

    default = LocalSettings.model_fields["data_dir"].default
    shown = "~/" + str(default.relative_to(Path.home()))
    assert shown in (DOCS / "getting-started.md").read_text(encoding="utf-8")
    for page in DOCS.rglob("*.md"):
        assert ".freehold/" not in page.read_text(encoding="utf-8"), f"{page}: no such path"
