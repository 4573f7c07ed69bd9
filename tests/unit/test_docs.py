"""The documentation's links lead somewhere, and the RAM policies grant what JindoSDK asks for."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(page: Path) -> str:
    """A Markdown page without its fenced code blocks."""
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)


def slugs(page: Path) -> list[str]:
    """GitHub's heading anchors of a Markdown page, in order (code blocks left out)."""
    return [re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(page), re.M)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (code blocks left out)."""
    return set(slugs(page))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 260, f"README.md has {lines} lines; move the details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sections_are_headings_that_can_be_linked(page):
    """A paragraph that opens with bold text is a section without an anchor: make it a heading."""
    bold_leads = [line[:60] for line in prose(page).splitlines() if line.startswith("**")]
    assert not bold_leads, f"{page.name}: use a heading instead of {bold_leads}"
    seen = slugs(page)
    twice = sorted({s for s in seen if seen.count(s) > 1})
    assert not twice, f"{page.name}: headings with the same anchor: {twice}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_long_pages_have_a_table_of_contents(page):
    text = page.read_text(encoding="utf-8")
    if text.count("\n") <= 200:
        return
    sections = [s for s in re.findall(r"^## +(.+?) *$", prose(page), re.M) if s != "Sources"]
    linked = {t.partition("#")[2] for t in LINK.findall(text) if t.startswith("#")}
    missing = [s for s in sections if re.sub(r"[^\w\- ]", "", s.lower()).replace(" ", "-") not in linked]
    assert not missing, f"{page.name}: sections missing from its table of contents: {missing}"


# The functions and classes that build the reports' fields (by name, wherever they live).
REPORT_BUILDERS = {"convert_report", "score_report", "dry_run_report", "report_header", "run_plan", "run_compare",
                   "compare_scores", "token_figures", "calibration_figures", "estimates", "predicted_vs_actual",
                   "score_estimate_from_sums", "engine_summaries", "engine_start_fields", "only_new_facts", "facts",
                   "examples", "as_dict",
                   "ConvertEstimate"}


def report_fields() -> dict[str, set[str]]:
    """Every string key the report builders write, by builder name."""
    found: dict[str, set[str]] = {}
    for path in [*sorted((ROOT / "promptscore").rglob("*.py")), *sorted((ROOT / "udfs").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name not in REPORT_BUILDERS:
                continue
            keys = found.setdefault(node.name, set())
            if isinstance(node, ast.ClassDef):
                keys |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)
                         and isinstance(n.target, ast.Name)}
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.Dict):
                    keys |= {k.value for k in sub.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                elif isinstance(sub, ast.Assign):
                    keys |= {t.slice.value for t in sub.targets if isinstance(t, ast.Subscript)
                             and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)}
    return found


def test_reports_md_names_every_field_of_every_report():
    found = report_fields()
    assert {"convert_report", "score_report", "dry_run_report", "report_header", "ConvertEstimate"} <= set(found), \
        f"report builders not found (renamed? update REPORT_BUILDERS): {sorted(set(REPORT_BUILDERS) - set(found))}"
    documented = set()
    for span in re.findall(r"`([^`]+)`", (ROOT / "docs" / "reports.md").read_text(encoding="utf-8")):
        documented |= set(re.findall(r"\w+", span))
    missing = {name: sorted(keys - documented) for name, keys in found.items() if keys - documented}
    assert not missing, f"fields missing from docs/reports.md: {missing}"


@pytest.mark.parametrize("name", ["emr.md", "serverless.md", "operations.md", "dataworks/README.md"])
def test_pages_about_alibaba_cloud_name_their_sources(name):
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    assert "## Sources" in text
    cited = set(re.findall(r"\[([A-Z]*\d+)\]", text.split("## Sources")[0]))
    listed = set(re.findall(r"^- \[([A-Z]*\d+)\]", text.split("## Sources")[1], re.M))
    assert cited <= listed, f"cited without a source: {sorted(cited - listed)}"


def statements(name: str) -> list[dict]:
    return json.loads((ROOT / "docs" / name).read_text())["Statement"]


def test_oss_policy_has_what_spark_temporary_directories_need():
    actions = {a for s in statements("oss-ram-policy.json") for a in s["Action"]}
    assert {"oss:ListObjects", "oss:GetObject", "oss:PutObject", "oss:DeleteObject", "oss:AbortMultipartUpload",
            "oss:ListParts", "oss:ListObjectVersions", "oss:DeleteObjectVersion"} <= actions


def test_oss_hdfs_policy_has_the_data_lake_actions_and_the_dlsdata_prefix():
    grants = statements("oss-hdfs-ram-policy.json")
    actions = {a for s in grants for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"oss:PostDataLakeStorageFileOperation", "oss:PostDataLakeStorageAdminOperation",
            "oss:GetBucketInfo", "oss:ListObjects"} <= actions
    everything = [s for s in grants if s["Action"] == "oss:*"]
    assert everything and set(everything[0]["Resource"]) == {"acs:oss:*:*:my-bucket/.dlsdata",
                                                              "acs:oss:*:*:my-bucket/.dlsdata*"}


def test_the_bootstrap_table_names_scripts_that_exist():
    text = (ROOT / "docs" / "emr.md").read_text(encoding="utf-8")
    named = set(re.findall(r"bootstrap/([\w-]+\.sh)", text))
    assert named == {"install-python-env.sh", "stage-model.sh", "gpu-discovery.sh"}
    assert all((ROOT / "bootstrap" / n).is_file() for n in named)
