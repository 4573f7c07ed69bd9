"""Which OSS endpoint a model is staged from (promptscore.tools.oss_source): the bucket's, from the URI or a flag,
not the node's region; a bucket in another region is one clear line."""

from __future__ import annotations

import pytest
from standins import MetadataStandIn, OssStandIn

from promptscore.tools.ecs_metadata import Metadata
from promptscore.tools.oss_source import OssSource, parse_uri
from promptscore.tools.stage_model import main
from udfs.staging import StagingError

KEYS = {"OSS_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS01",
        "OSS_ACCESS_KEY_SECRET": "FAKEsecretVALUEforTESTSonly0123456789"}
NOWHERE = Metadata("http://127.0.0.1:9", timeout_s=0.5)  # a node whose metadata must not be needed


@pytest.fixture
def env(monkeypatch):
    for name in ("OSS_ENDPOINT", "OSS_SESSION_TOKEN", "ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize("uri, bucket, endpoint, prefix", [
    ("oss://models/rm/", "models", None, "rm/"),
    ("oss://models.oss-cn-shanghai-internal.aliyuncs.com/rm/v2/", "models", "oss-cn-shanghai-internal.aliyuncs.com",
     "rm/v2/"),
    ("oss://models", "models", None, ""),
])
def test_parse_uri(uri, bucket, endpoint, prefix):
    assert parse_uri(uri) == (bucket, endpoint, prefix)


@pytest.mark.parametrize("kwargs, uri, expected", [
    ({}, "oss://models.oss-cn-shanghai-internal.aliyuncs.com/rm/", "https://oss-cn-shanghai-internal.aliyuncs.com"),
    ({"region": "cn-beijing"}, "oss://models/rm/", "https://oss-cn-beijing-internal.aliyuncs.com"),
    ({"endpoint": "oss-cn-beijing.aliyuncs.com"}, "oss://models.oss-cn-shanghai-internal.aliyuncs.com/rm/",
     "https://oss-cn-beijing.aliyuncs.com"),  # the flag wins over the URI
    ({"region": "cn-beijing"}, "oss://models.oss-cn-shanghai.aliyuncs.com/rm/",
     "https://oss-cn-shanghai.aliyuncs.com"),  # the URI names the bucket's own endpoint
])
def test_the_bucket_endpoint_comes_from_the_uri_or_a_flag_not_the_node(env, kwargs, uri, expected):
    env.setenv("OSS_ENDPOINT", "https://oss-cn-hangzhou-internal.aliyuncs.com")  # the node's: loses to both
    source = OssSource(uri, metadata=NOWHERE, **kwargs)
    assert source.bucket.endpoint == expected and source.bucket.bucket_name == "models" and source.prefix == "rm/"


def test_without_uri_or_flag_the_node_region_is_the_last_resort(env):
    with MetadataStandIn("hardened", region="cn-zhangjiakou") as metadata:
        source = OssSource("oss://models/rm/", metadata=Metadata(metadata.url))
    assert source.bucket.endpoint == "https://oss-cn-zhangjiakou-internal.aliyuncs.com"


def test_a_bad_region_is_refused(env):
    with pytest.raises(StagingError, match=r"--region 'oss-cn-beijing.aliyuncs.com' is not a region ID"):
        OssSource("oss://models/rm/", region="oss-cn-beijing.aliyuncs.com", metadata=NOWHERE)


class OtherRegionBucket(OssStandIn):
    """A bucket that lives in cn-shanghai, reached through another region's endpoint: OSS answers
    every request with 403 AccessDenied and the endpoint to use."""

    def handle(self, method, path, headers):
        return 403, {"Content-Type": "application/xml", "x-oss-ec": "0003-00000001"}, (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>The bucket you are '
            b"attempting to access must be addressed using the specified endpoint. Please send all future requests to "
            b"this endpoint.</Message><RequestId>5C3D9175B6FC201293AD****</RequestId><HostId>bucket.oss-cn-hangzhou-"
            b"internal.aliyuncs.com</HostId><Bucket>bucket</Bucket><Endpoint>oss-cn-shanghai.aliyuncs.com</Endpoint>"
            b"</Error>")


def test_a_bucket_in_another_region_is_one_line_saying_what_to_pass(env, tmp_path, capsys):
    with OtherRegionBucket(tmp_path) as oss:
        env.setenv("OSS_ENDPOINT", oss.url)
        assert main(["oss://bucket/models/rm/", str(tmp_path / "dest")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stage-model: error: bucket bucket is not reached through")
    assert "oss://bucket.oss-cn-shanghai.aliyuncs.com/models/rm/" in err and "--region" in err
    assert KEYS["OSS_ACCESS_KEY_SECRET"] not in err and not (tmp_path / "dest").exists()


def test_staging_with_region_and_endpoint_flags(env, tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text('{"num_labels": 1}')
    with OssStandIn(tmp_path) as oss:
        assert main(["oss://bucket/rm/", str(tmp_path / "dest"), "--endpoint", oss.url, "--region", "cn-beijing"]) == 0
    assert (tmp_path / "dest" / "config.json").read_text() == '{"num_labels": 1}'
