"""README.md and docs/: the site builds with `mkdocs build --strict` (a broken link or anchor
fails it, README's included), the README stays a first read, and the outputs the quick start
shows for `check` and `render-sql` are what those commands print."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.doc_examples import REPO, assert_shows, mismatch, shown_examples
from support.processes import run_pgne

README_LIMIT = 16_000  # bytes: what a user reads first, well under 25 KB
# Every marked example and who checks it: a marker removed from the docs fails here too.
CHECKED_EXAMPLES = {
    "demo-start", "demo-events", "demo-histogram", "demo-stop",  # tests/integration/test_demo.py
    "quickstart-config", "quickstart-check", "quickstart-render-sql",  # below
}


def mkdocs_build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=120, cwd=project)


def copy_of_the_docs(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("mkdocs.yml", "readme_as_home.py", "README.md"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "docs", project / "docs")
    return project


def test_the_docs_build_with_mkdocs_strict(tmp_path):
    result = mkdocs_build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    # README.md is the site's home page, so its links are checked with the rest
    assert (tmp_path / "site" / "index.html").read_text().count("pgne demo") > 0


def test_a_broken_anchor_in_the_readme_fails_the_strict_build(tmp_path):
    project = copy_of_the_docs(tmp_path)
    readme = project / "README.md"
    good = "docs/metrics.md#values-histograms-of-numeric-columns"
    assert good in readme.read_text()
    readme.write_text(readme.read_text().replace(good, "docs/metrics.md#values-histograms"))
    result = mkdocs_build(project, tmp_path / "site")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "does not contain an anchor '#values-histograms'" in result.stderr, result.stderr


def test_a_broken_anchor_or_link_between_pages_fails_the_strict_build(tmp_path):
    project = copy_of_the_docs(tmp_path)
    page = project / "docs" / "deployment.md"
    page.write_text(page.read_text() + "\nSee [nothing](#no-such-section) and [gone](no-such-page.md).\n")
    result = mkdocs_build(project, tmp_path / "site")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "there is no such anchor on this page" in result.stderr, result.stderr
    assert "'no-such-page.md'" in result.stderr, result.stderr


def test_the_readme_is_a_first_read_with_the_two_commands_and_one_install_line():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) < README_LIMIT
    assert "python3 dev.py demo" in text and "python3 dev.py test" in text  # .ci/run greps the latter
    everywhere = text + "".join(p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md"))
    assert everywhere.count("/opt/pgne/bin/pip install .") == 1


def test_every_marked_example_is_checked_by_a_test():
    assert set(shown_examples()) == CHECKED_EXAMPLES


def test_a_shown_output_that_drifted_is_caught_and_ports_and_values_are_not():
    real = 'pgne_events_total{host="127.0.0.1:45201",supplier="acme"} 3.0\n'
    assert mismatch('pgne_events_total{host="127.0.0.1:37407",supplier="acme"} 29.0\n', real) is None
    assert mismatch('pgne_events_total{host="127.0.0.1",supplier="acme"} 9.0\n', real) is not None
    assert mismatch("a\n...\n", "a\nb\nc\n") is None
    assert mismatch("b\n...\n", "a\nb\nc\n") is not None  # not where the output starts
    assert mismatch("...\nc\n", "a\nb\nc\n") is None
    assert mismatch("a\n...\nb\n", "a\nb\nc\n") is not None  # not where it ends
    assert mismatch("a\nb\n", "a\nb\nc\n") is not None  # without `...`: the whole output


def test_the_quick_starts_check_and_render_sql_outputs_are_what_pgne_prints(tmp_path):
    examples = shown_examples()
    (tmp_path / "events_config.yml").write_text(examples["quickstart-config"])
    (tmp_path / "shop.password").write_text("secret\n")

    check = run_pgne("check", "-c", "events_config.yml", cwd=tmp_path)
    assert (check.returncode, check.stderr) == (0, "")
    assert_shows("quickstart-check", check.stdout)

    render = run_pgne("render-sql", "-c", "events_config.yml", cwd=tmp_path)
    assert (render.returncode, render.stderr) == (0, "")
    assert_shows("quickstart-render-sql", render.stdout)
