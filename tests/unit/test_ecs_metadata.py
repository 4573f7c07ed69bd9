"""ECS instance metadata in security hardening mode (token first) and normal mode (plain GETs),
against a local stand-in for the metadata service."""

from __future__ import annotations

import pytest
from standins import ROLE_CREDENTIALS, MetadataStandIn

from promptscore.tools.ecs_metadata import Metadata, MetadataError, RoleCredentialsProvider, role_credentials


def test_hardened_mode_gets_a_token_once_and_sends_it_with_every_get():
    with MetadataStandIn("hardened") as service:
        metadata = Metadata(service.url)
        assert metadata.get("region-id") == "cn-standin"
        assert metadata.get("ram/security-credentials/") == "standin-role"
    put, *gets = service.requests
    assert (put["method"], put["path"]) == ("PUT", "/latest/api/token")
    assert put["headers"]["x-aliyun-ecs-metadata-token-ttl-seconds"] == "21600"
    assert [g["headers"]["x-aliyun-ecs-metadata-token"] for g in gets] == ["token-0", "token-0"]


@pytest.mark.parametrize("mode", ["normal", "no-token-api"])
def test_without_hardened_mode_plain_gets_work(mode):
    with MetadataStandIn(mode) as service:
        assert Metadata(service.url).get("region-id") == "cn-standin"
    assert [r["method"] for r in service.requests] == ["PUT", "GET"]
    if mode == "no-token-api":  # the token call failed: the GET goes without one
        assert "x-aliyun-ecs-metadata-token" not in service.requests[1]["headers"]


def test_a_rejected_token_is_replaced_once():
    with MetadataStandIn("hardened") as service:
        metadata = Metadata(service.url)
        assert metadata.get("region-id") == "cn-standin"
        service.tokens.clear()  # the service forgot it (expired early, restarted)
        assert metadata.get("region-id") == "cn-standin"
    assert [r["method"] for r in service.requests] == ["PUT", "GET", "GET", "PUT", "GET"]


def test_role_credentials_in_hardened_mode_are_never_shown(monkeypatch):
    with MetadataStandIn("hardened") as service:
        monkeypatch.setenv("PROMPTSCORE_ECS_METADATA_URL", service.url)
        provider = RoleCredentialsProvider()
        creds = provider.get_credentials()
        assert provider.get_credentials() is creds  # cached until shortly before it expires
        assert role_credentials(Metadata(), "standin-role").access_key_id == ROLE_CREDENTIALS["AccessKeyId"]
    assert (creds.get_access_key_id(), creds.get_access_key_secret(), creds.get_security_token()) == \
        (ROLE_CREDENTIALS["AccessKeyId"], ROLE_CREDENTIALS["AccessKeySecret"], ROLE_CREDENTIALS["SecurityToken"])
    assert not any(value in repr(creds) for value in ROLE_CREDENTIALS.values())


def test_errors_name_the_item_never_a_value():
    with MetadataStandIn("hardened", credentials={"AccessKeyId": "STS.FAKE"}) as service:  # no secret: malformed
        with pytest.raises(MetadataError, match="credentials of RAM role standin-role are malformed") as e:
            role_credentials(Metadata(service.url))
        assert "STS.FAKE" not in str(e.value)
        with pytest.raises(MetadataError, match=r"cannot read ECS metadata instance-id from .*: HTTP 404"):
            Metadata(service.url).get("instance-id")
    with pytest.raises(MetadataError, match="cannot read ECS metadata region-id from http://127.0.0.1:9"):
        Metadata("http://127.0.0.1:9", timeout_s=1).get("region-id")  # nothing listens there
