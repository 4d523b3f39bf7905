"""pitsctl's cloud side against moto in server mode (IoT, IAM, S3, Logs, STS over real HTTP)."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
import trustme
from servers import aws_client, moto_server

from pinthesky.installer.provision import (
    ROLE,
    ROLE_ALIAS,
    THING_POLICY,
    Names,
    Provisioner,
    ProvisionError,
    public_key,
    role_policy,
    thing_policy,
)


def csr_pem(name: str, key: Any = None) -> str:
    """A signing request as the Pi makes one; pass the same ``key`` for a re-run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def sign_requests_like_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's CreateCertificateFromCsr returns a certificate for a key of its own; AWS signs
    the request's key. Make the stand-in do what AWS does (the installer relies on it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from moto.iot.models import IoTBackend

    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "stand-in IoT CA")])

    def create_certificate_from_csr(self: Any, csr: str, set_as_active: bool) -> Any:
        request = x509.load_pem_x509_csr(csr.encode())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(request.subject)
            .issuer_name(issuer)
            .public_key(request.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(ca_key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        status = "ACTIVE" if set_as_active else "INACTIVE"
        return self.register_certificate(pem, None, set_as_active, status)

    monkeypatch.setattr(IoTBackend, "create_certificate_from_csr", create_certificate_from_csr)


def enforce_iam(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks every request against the caller's IAM policies from now on. Its SigV4
    check recomputes IoT's GET requests over the wrong payload and refuses them all
    (SignatureDoesNotMatch), so for IoT only the permissions are checked, not signatures."""
    from moto import settings as moto_settings
    from moto.iam.access_control import IAMRequest

    original = IAMRequest.check_signature

    def check_signature(self: Any) -> None:
        if self._service != "iot":
            original(self)

    monkeypatch.setattr(IAMRequest, "check_signature", check_signature)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)


@pytest.fixture
def aws(monkeypatch):
    """A moto server; boto3 pointed at it for every service."""
    sign_requests_like_aws(monkeypatch)
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


def assert_nothing_left(endpoint: str, region: str) -> None:
    """No IoT, IAM, S3 or Logs resource of pitsctl's is left in moto."""
    iot = aws_client("iot", endpoint, region)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert iot.list_policies()["policies"] == []
    assert iot.list_role_aliases()["roleAliases"] == []
    assert iot.list_thing_groups()["thingGroups"] == []
    assert ROLE not in [r["RoleName"] for r in aws_client("iam", endpoint).list_roles()["Roles"]]
    assert aws_client("s3", endpoint).list_buckets()["Buckets"] == []
    assert aws_client("logs", endpoint, region).describe_log_groups()["logGroups"] == []


def test_install_creates_everything_and_a_rerun_reuses_it(aws):
    from cryptography.hazmat.primitives.asymmetric import ec

    p = provisioner("cam-a")
    key = ec.generate_private_key(ec.SECP256R1())  # the Pi's, kept there across runs
    first = p.install(csr_pem("cam-a", key))
    assert {"bucket cams", "IAM role pinthesky-device", "thing cam-a"} <= set(first.created)
    assert first.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert first.data_endpoint and first.credentials_endpoint and first.role_alias == ROLE_ALIAS
    # A re-run (or a first run cut short after AWS made the certificate) signs a new request
    # with the same key: the thing's certificate for that key is found, not a second one.
    again = p.install(csr_pem("cam-a", key))
    assert again.certificate_arn == first.certificate_arn and again.created == []
    assert again.certificate_pem == first.certificate_pem
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
    with pytest.raises(ProvisionError, match="already has a certificate for another key"):
        provisioner("cam-a").install(csr_pem("impostor"))


def test_remove_takes_away_the_camera_then_the_shared_resources(aws):
    a, b = provisioner("cam-a"), provisioner("cam-b")
    a.install(csr_pem("cam-a"))
    b.install(csr_pem("cam-b"))
    removed = a.remove().removed
    assert "thing cam-a" in removed and any(r.startswith("certificate") for r in removed)
    iot = aws_client("iot", aws, "eu-west-1")
    # cam-b still needs the policy, the role and the alias.
    assert iot.get_policy(policyName=THING_POLICY)["policyName"] == THING_POLICY
    assert [t["thingName"] for t in iot.list_things()["things"]] == ["cam-b"]
    b.remove()
    # With the last camera, the shared resources went, and the bucket and the log group
    # pitsctl made (nothing in them).
    assert_nothing_left(aws, "eu-west-1")
    again = a.remove()  # a second remove finds nothing and fails on nothing
    assert again.removed == [] and again.kept == []


def test_a_bucket_that_holds_clips_is_kept_and_one_pitsctl_did_not_make_is_left_alone(aws):
    s3 = aws_client("s3", aws, "eu-west-1")
    s3.create_bucket(Bucket="mine", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    own = provisioner("cam-a", bucket="mine")
    own.install(csr_pem("cam-a"))
    assert "bucket mine" not in own.remove().removed
    assert s3.head_bucket(Bucket="mine")  # the user's own bucket: not pitsctl's to remove
    made = provisioner("cam-b", bucket="cams")
    made.install(csr_pem("cam-b"))
    s3.put_object(Bucket="cams", Key="motion_videos/cam-b/1700000000.motion.h264", Body=b"x")
    done = made.remove()
    assert "bucket cams" not in done.removed
    assert any(k.startswith("bucket cams: it holds clips") for k in done.kept)
    assert s3.get_object(Bucket="cams", Key="motion_videos/cam-b/1700000000.motion.h264")


def test_cameras_with_different_buckets_share_the_role_without_losing_access(aws):
    provisioner("cam-a", bucket="cams-a").install(csr_pem("cam-a"))
    provisioner("cam-b", bucket="cams-b").install(csr_pem("cam-b"))
    doc = aws_client("iam", aws).get_role_policy(
        RoleName=ROLE, PolicyName="pinthesky-device-access"
    )
    policy = doc["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    for thing, bucket in (("cam-a", "cams-a"), ("cam-b", "cams-b")):
        key = f"arn:aws:s3:::{bucket}/motion_videos/{thing}/1.motion.h264"
        assert allowed(policy, "s3:PutObject", key, {"credentials-iot:ThingName": thing})
    other = "arn:aws:s3:::cams-a/motion_videos/cam-a/1.motion.h264"
    assert not allowed(policy, "s3:PutObject", other, {"credentials-iot:ThingName": "cam-b"})


def test_public_keys_of_a_request_and_its_certificate_match():
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_key = trustme.CA().issue_cert("cam-a")
    pem = cert_key.cert_chain_pems[0].bytes().decode()
    spki = (
        x509.load_pem_x509_certificate(pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert public_key(pem) == spki
    request = csr_pem("cam-a")
    assert public_key(request) == x509.load_pem_x509_csr(
        request.encode()
    ).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ProvisionError, match="not a PEM certificate"):
        public_key("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


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
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:*", "sts:*", "logs:*", "iot:*"], "Resource": "*"}
        ],
    }
    iam.put_user_policy(UserName="limited", PolicyName="p", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="limited")["AccessKey"]
    enforce_iam(monkeypatch)
    session = boto3.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name="eu-west-1",
    )
    names = Names(thing="cam-a", bucket="cams", region="eu-west-1")
    with pytest.raises(ProvisionError) as refused:
        Provisioner(session, names).install(csr_pem("cam-a"))
    text = str(refused.value)
    assert "\n" not in text and "docs/cloud.md" in text
    assert text.startswith("GetRole failed: AccessDenied") and "iam:GetRole" in text
    # Permissions granted (moto checks no signatures on IoT once auth is off): the same
    # command finishes the job, keeping what the first run made.
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    installed = Provisioner(session, names).install(csr_pem("cam-a"))
    assert installed.certificate_arn and "bucket cams" not in installed.created  # kept
