"""The documentation's links lead somewhere, and the RAM policies grant what JindoSDK asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (code blocks left out)."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


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
