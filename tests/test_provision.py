"""pitsctl's cloud side against moto in server mode (IoT, IAM, S3, Logs, STS over real HTTP)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
from servers import aws_client, moto_server

from pinthesky.provision import (
    ROLE,
    ROLE_ALIAS,
    THING_POLICY,
    Names,
    Provisioner,
    ProvisionError,
    role_policy,
    thing_policy,
)


def csr_pem(name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def aws(monkeypatch):
    """A moto server; boto3 pointed at it for every service."""
    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        yield endpoint


def provisioner(thing: str, region: str = "eu-west-1", bucket: str = "cams") -> Provisioner:
    import boto3

    names = Names(thing=thing, bucket=bucket, region=region, log_group="/pinthesky/cams")
    return Provisioner(boto3.Session(region_name=region), names)


def test_install_creates_everything_and_a_rerun_reuses_it(aws):
    p = provisioner("cam-a")
    first = p.install(csr_pem("cam-a"))
    assert {"bucket cams", "IAM role pinthesky-device", "thing cam-a"} <= set(first.created)
    assert first.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert first.data_endpoint and first.credentials_endpoint and first.role_alias == ROLE_ALIAS
    again = p.install(certificate_pem=first.certificate_pem)  # the Pi keeps its key
    assert again.certificate_arn == first.certificate_arn and again.created == []
    view = p.view()
    assert view["thing"] is True and view["bucket"] is True and view["role_alias"] is True
    assert view["certificates"] == [first.certificate_arn] and view["policy_attached"] is True
    s3 = aws_client("s3", aws, "eu-west-1")
    assert s3.get_bucket_location(Bucket="cams")["LocationConstraint"] == "eu-west-1"
    iam = aws_client("iam", aws)
    trust = iam.get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"]["Service"] == "credentials.iot.amazonaws.com"


def test_a_thing_with_someone_elses_certificate_is_refused(aws):
    owner = provisioner("cam-a")
    owner.install(csr_pem("cam-a"))
    with pytest.raises(ProvisionError, match="already has a certificate"):
        provisioner("cam-a").install(csr_pem("impostor"))


def test_remove_takes_away_the_camera_then_the_shared_resources(aws):
    a, b = provisioner("cam-a"), provisioner("cam-b")
    a.install(csr_pem("cam-a"))
    b.install(csr_pem("cam-b"))
    removed = a.remove()
    assert "thing cam-a" in removed and any(r.startswith("certificate") for r in removed)
    iot = aws_client("iot", aws, "eu-west-1")
    # cam-b still needs the policy, the role and the alias.
    assert iot.get_policy(policyName=THING_POLICY)["policyName"] == THING_POLICY
    assert [t["thingName"] for t in iot.list_things()["things"]] == ["cam-b"]
    b.remove()
    iot = aws_client("iot", aws, "eu-west-1")
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []
    assert iot.list_role_aliases()["roleAliases"] == []
    assert iot.list_thing_groups()["thingGroups"] == []
    assert ROLE not in [r["RoleName"] for r in aws_client("iam", aws).list_roles()["Roles"]]
    assert a.remove() == []  # a second remove finds nothing and fails on nothing


def test_a_bucket_in_us_east_1_needs_no_location_constraint(aws):
    provisioner("cam-a", region="us-east-1", bucket="cams-east").install(csr_pem("cam-a"))
    assert aws_client("s3", aws).head_bucket(Bucket="cams-east")


# -- the policies ----------------------------------------------------------------------------


def allowed(policy: dict[str, Any], action: str, resource: str, variables: dict[str, str]) -> bool:
    """IAM evaluation for Allow-only documents: an action and resource pattern must match."""
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if not any(fnmatch.fnmatch(action.lower(), a.lower()) for a in actions):
            continue
        for raw in resources:
            pattern = raw
            for name, value in variables.items():
                pattern = pattern.replace("${" + name + "}", value)
            if fnmatch.fnmatchcase(resource, pattern) and st["Effect"] == "Allow":
                return True
    return False


def test_a_cameras_credentials_write_only_under_its_own_prefix():
    names = Names(thing="cam-a", bucket="cams", region="eu-west-1", log_group="/pinthesky/cams")
    policy = json.loads(json.dumps(role_policy(names, "123456789012")))  # valid JSON
    as_a = {"credentials-iot:ThingName": "cam-a"}
    own = "arn:aws:s3:::cams/motion_videos/cam-a/1715700000.motion.h264"
    other = "arn:aws:s3:::cams/motion_videos/cam-b/1715700000.motion.h264"
    assert allowed(policy, "s3:PutObject", own, as_a)
    assert allowed(policy, "s3:PutObject", "arn:aws:s3:::cams/capture_images/cam-a/x.jpg", as_a)
    assert not allowed(policy, "s3:PutObject", other, as_a)
    assert not allowed(policy, "s3:PutObject", "arn:aws:s3:::cams/motion_videos/x", as_a)
    assert not allowed(policy, "s3:GetObject", own, as_a)
    assert not allowed(policy, "s3:DeleteObject", own, as_a)
    logs = "arn:aws:logs:eu-west-1:123456789012:log-group:/pinthesky/cams:log-stream:x"
    assert allowed(policy, "logs:PutLogEvents", logs, as_a)
    assert not allowed(
        policy, "logs:PutLogEvents", "arn:aws:logs:eu-west-1:123456789012:log-group:other:*", as_a
    )


def test_a_thing_may_use_only_its_own_topics_and_shadow():
    policy = json.loads(json.dumps(thing_policy("eu-west-1", "123456789012")))
    as_a = {"iot:Connection.Thing.ThingName": "cam-a"}
    arn = "arn:aws:iot:eu-west-1:123456789012"
    assert allowed(policy, "iot:Connect", f"{arn}:client/cam-a", as_a)
    assert not allowed(policy, "iot:Connect", f"{arn}:client/cam-b", as_a)
    own_shadow = f"{arn}:topic/$aws/things/cam-a/shadow/name/pinthesky/update"
    other_shadow = f"{arn}:topic/$aws/things/cam-b/shadow/name/pinthesky/update"
    assert allowed(policy, "iot:Publish", own_shadow, as_a)
    assert not allowed(policy, "iot:Publish", other_shadow, as_a)
    assert allowed(policy, "iot:Receive", f"{arn}:topic/pinthesky/events/cam-a/input", as_a)
    assert not allowed(policy, "iot:Receive", f"{arn}:topic/pinthesky/events/cam-b/input", as_a)
    assert not allowed(policy, "iot:Publish", f"{arn}:topic/pinthesky/events/cam-b/input", as_a)
    assert allowed(policy, "iot:AssumeRoleWithCertificate", f"{arn}:rolealias/{ROLE_ALIAS}", as_a)


def test_missing_permissions_are_one_message_and_a_rerun_repairs(aws, monkeypatch):
    """moto enforces IAM for a user allowed S3 and STS only: the first IAM call is refused
    with one clear message; with the permissions granted, the same install completes."""
    import boto3
    from moto import settings as moto_settings

    iam = aws_client("iam", aws)
    iam.create_user(UserName="limited")
    allow = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:*", "logs:*"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="limited", PolicyName="p", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="limited")["AccessKey"]
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    session = boto3.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="eu-west-1",
    )
    names = Names(thing="cam-a", bucket="cams", region="eu-west-1")
    with pytest.raises(ProvisionError) as refused:
        Provisioner(session, names).install(csr_pem("cam-a"))
    text = str(refused.value)
    assert "\n" not in text and "README" in text
    assert text.startswith("GetRole failed: AccessDenied") and "iam:GetRole" in text
    # Permissions granted (moto checks no signatures on IoT once auth is off): the same
    # command finishes the job, keeping what the first run made.
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    installed = Provisioner(session, names).install(csr_pem("cam-a"))
    assert installed.certificate_arn and "bucket cams" not in installed.created  # kept
