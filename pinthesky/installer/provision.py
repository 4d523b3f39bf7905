"""The cloud side of ``pitsctl``: the AWS resources a camera needs, created, checked and removed
idempotently with the workstation's own AWS credentials (boto3).

Per camera: the IoT thing (in the ``pinthesky`` thing group) and its certificate, made from a
certificate signing request so that the private key never leaves the Pi. Shared by every camera
of the account and region, and scoped per thing by policy variables:

- the thing policy: connect only as ``${iot:Connection.Thing.ThingName}``, publish, subscribe
  and receive only on that thing's event topics, its ``pinthesky`` named shadow and its jobs,
  and ``iot:AssumeRoleWithCertificate`` on the one role alias;
- the IAM role trusted by ``credentials.iot.amazonaws.com`` with a policy that lets a camera
  write S3 objects only under ``<prefix>/${credentials-iot:ThingName}/`` (no camera can write
  into another's folder), write to its CloudWatch log group, and post to the data plane;
- the role alias, the bucket (in any region) and the log group.

The role's policy is shared too: each install adds its bucket and log group to it, so
cameras installed with different buckets keep working side by side.

``remove`` takes away what belongs to the thing (certificate deactivated and deleted, thing,
group membership) and, once no camera is left, the shared policy, role, role alias and thing
group, and the bucket and log group that pitsctl made (tagged ``created-by: pitsctl``). A
bucket that still holds clips is kept, and said so: removing a camera never deletes what it
recorded.

Every AWS refusal becomes a ``ProvisionError`` naming the call and what to do.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pinthesky.errors import PintheskyError

THING_GROUP = "pinthesky"
THING_POLICY = "pinthesky-thing"
ROLE = "pinthesky-device"
ROLE_POLICY = "pinthesky-device-access"
ROLE_ALIAS = "pinthesky-role-alias"
SHADOW = "pinthesky"
CREATED_BY = "created-by"
"""Tag on the bucket and log group that pitsctl made: only those are its to remove."""


class ProvisionError(PintheskyError):
    """One step failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Names:
    thing: str
    bucket: str
    region: str
    log_group: str | None = None
    video_prefix: str = "motion_videos"
    image_prefix: str = "capture_images"


@dataclass
class Installed:
    certificate_arn: str
    certificate_pem: str
    data_endpoint: str
    credentials_endpoint: str
    role_alias: str
    created: list[str] = field(default_factory=list)


@dataclass
class Removal:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def thing_policy(region: str, account: str) -> dict[str, Any]:
    """The IoT policy every camera's certificate carries; the thing name comes from the
    connection, so one policy serves all cameras and none can act as another."""
    arn = f"arn:aws:iot:{region}:{account}"
    thing = "${iot:Connection.Thing.ThingName}"
    shadow = f"$aws/things/{thing}/shadow/name/{SHADOW}"
    jobs = f"$aws/things/{thing}/jobs"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"{arn}:client/{thing}"},
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [
                    f"{arn}:topic/pinthesky/events/output",
                    f"{arn}:topic/{shadow}/get",
                    f"{arn}:topic/{shadow}/update",
                    f"{arn}:topic/{jobs}/start-next",
                    f"{arn}:topic/{jobs}/*/update",
                    f"{arn}:topic/{jobs}/*/get",
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    f"{arn}:topicfilter/pinthesky/events/{thing}/input",
                    f"{arn}:topicfilter/{shadow}/*",
                    f"{arn}:topicfilter/{jobs}/*",
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [
                    f"{arn}:topic/pinthesky/events/{thing}/input",
                    f"{arn}:topic/{shadow}/*",
                    f"{arn}:topic/{jobs}/*",
                ],
            },
            {
                "Effect": "Allow",
                "Action": "iot:AssumeRoleWithCertificate",
                "Resource": f"{arn}:rolealias/{ROLE_ALIAS}",
            },
        ],
    }


TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "credentials.iot.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def role_policy(names: Names, account: str) -> dict[str, Any]:
    """What a camera's short-lived credentials may do: its own S3 folders only (the
    credentials provider sets ``credentials-iot:ThingName`` from the certificate's thing)."""
    thing = "${credentials-iot:ThingName}"
    bucket = f"arn:aws:s3:::{names.bucket}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "OwnClipsAndStills",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": [
                f"{bucket}/{names.video_prefix}/{thing}/*",
                f"{bucket}/{names.image_prefix}/{thing}/*",
            ],
        },
        {
            "Sid": "LiveView",
            "Effect": "Allow",
            "Action": "execute-api:ManageConnections",
            "Resource": f"arn:aws:execute-api:{names.region}:{account}:*/*/POST/@connections/*",
        },
    ]
    if names.log_group:
        statements.append(
            {
                "Sid": "OwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": [
                    f"arn:aws:logs:{names.region}:{account}:log-group:{names.log_group}",
                    f"arn:aws:logs:{names.region}:{account}:log-group:{names.log_group}:*",
                ],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def merge_policies(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the resources ``old`` allowed in statements of the same ``Sid`` added
    (other cameras' buckets and log groups), and ``old``'s other statements kept."""
    merged = [dict(st) for st in new["Statement"]]
    by_sid = {st.get("Sid"): st for st in merged}
    for st in old.get("Statement", []):
        mine = by_sid.get(st.get("Sid"))
        if mine is None:
            merged.append(st)
            continue
        have = _as_list(mine["Resource"])
        mine["Resource"] = have + [r for r in _as_list(st.get("Resource", [])) if r not in have]
    return {"Version": new["Version"], "Statement": merged}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__))


class Provisioner:
    """Creates, checks and removes one camera's cloud resources (blocking calls)."""

    def __init__(
        self, session: Any, names: Names, progress: Callable[[str], None] | None = None
    ) -> None:
        self.names = names
        self.progress = progress or (lambda _: None)
        self.iot = session.client("iot", region_name=names.region)
        self.iam = session.client("iam", region_name=names.region)
        self.s3 = session.client("s3", region_name=names.region)
        self.logs = session.client("logs", region_name=names.region)
        self.sts = session.client("sts", region_name=names.region)
        self._account: str | None = None

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            code = _code(exc)
            if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
                raise ProvisionError(
                    f"{what}: the workstation's AWS credentials may not do this ({code}); "
                    "grant the permissions docs/cloud.md lists (docs/alerts.md for alerts)"
                ) from None
            raise

    @property
    def account(self) -> str:
        if self._account is None:
            ident = self._call("sts get-caller-identity", self.sts.get_caller_identity)
            self._account = str(ident["Account"])
        return self._account

    # -- install ------------------------------------------------------------------------------

    def install(self, csr_pem: str) -> Installed:
        """Create or reuse everything; ``csr_pem`` is the Pi's signing request (made from its
        key every time: the same key gets back the same certificate)."""
        with _explained():
            return self._install(csr_pem)

    def _install(self, csr_pem: str) -> Installed:
        n = self.names
        created: list[str] = []
        self._claimed_certificate(csr_pem)  # refused before anything is made
        self._ensure_bucket(created)
        if n.log_group:
            self._ensure_log_group(created)
        role_arn = self._ensure_role(created)
        self._ensure_role_alias(role_arn, created)
        self._ensure_thing_policy(created)
        self._ensure_thing(created)
        cert_arn, cert_pem = self._ensure_certificate(csr_pem, created)
        self._call(
            "iot attach-policy",
            self.iot.attach_policy,
            policyName=THING_POLICY,
            target=cert_arn,
        )
        self._call(
            "iot attach-thing-principal",
            self.iot.attach_thing_principal,
            thingName=n.thing,
            principal=cert_arn,
        )
        data = self._call(
            "iot describe-endpoint", self.iot.describe_endpoint, endpointType="iot:Data-ATS"
        )
        creds = self._call(
            "iot describe-endpoint",
            self.iot.describe_endpoint,
            endpointType="iot:CredentialProvider",
        )
        return Installed(
            cert_arn,
            cert_pem,
            data["endpointAddress"],
            creds["endpointAddress"],
            ROLE_ALIAS,
            created,
        )

    def _ensure_bucket(self, created: list[str]) -> None:
        n = self.names
        try:
            self.s3.head_bucket(Bucket=n.bucket)
            return
        except Exception as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                if _code(exc) in ("403", "AccessDenied"):
                    raise ProvisionError(
                        f"bucket {n.bucket}: exists but belongs to someone else, or these "
                        "credentials may not read it; choose another --bucket"
                    ) from None
                raise
        self.progress(f"creating bucket {n.bucket} in {n.region}")
        kwargs: dict[str, Any] = {"Bucket": n.bucket}
        if n.region != "us-east-1":  # us-east-1 refuses a location constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": n.region}
        self._call("s3 create-bucket", self.s3.create_bucket, **kwargs)
        self._call(
            "s3 put-bucket-tagging",
            self.s3.put_bucket_tagging,
            Bucket=n.bucket,
            Tagging={"TagSet": [{"Key": CREATED_BY, "Value": "pitsctl"}]},
        )
        self._call(
            "s3 put-public-access-block",
            self.s3.put_public_access_block,
            Bucket=n.bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
        created.append(f"bucket {n.bucket}")

    def _ensure_log_group(self, created: list[str]) -> None:
        group = self.names.log_group
        try:
            self._call(
                "logs create-log-group",
                self.logs.create_log_group,
                logGroupName=group,
                tags={CREATED_BY: "pitsctl"},
            )
            created.append(f"log group {group}")
        except self.logs.exceptions.ResourceAlreadyExistsException:
            pass

    def _ensure_role(self, created: list[str]) -> str:
        try:
            role = self.iam.get_role(RoleName=ROLE)["Role"]
        except self.iam.exceptions.NoSuchEntityException:
            self.progress(f"creating IAM role {ROLE}")
            role = self._call(
                "iam create-role",
                self.iam.create_role,
                RoleName=ROLE,
                AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                Description="pinthesky cameras, through the AWS IoT credentials provider",
            )["Role"]
            created.append(f"IAM role {ROLE}")
        # Shared by every camera: this camera's bucket and log group are added to what the
        # others already use, never put in their place.
        document = role_policy(self.names, self.account)
        with contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
            answer = self.iam.get_role_policy(RoleName=ROLE, PolicyName=ROLE_POLICY)
            existing = answer["PolicyDocument"]
            document = merge_policies(
                json.loads(existing) if isinstance(existing, str) else existing, document
            )
        self._call(
            "iam put-role-policy",
            self.iam.put_role_policy,
            RoleName=ROLE,
            PolicyName=ROLE_POLICY,
            PolicyDocument=json.dumps(document),
        )
        return str(role["Arn"])

    def _ensure_role_alias(self, role_arn: str, created: list[str]) -> str:
        try:
            alias = self.iot.describe_role_alias(roleAlias=ROLE_ALIAS)["roleAliasDescription"]
            return str(alias["roleAliasArn"])
        except self.iot.exceptions.ResourceNotFoundException:
            pass
        self.progress(f"creating role alias {ROLE_ALIAS}")
        answer = self._call(
            "iot create-role-alias",
            self.iot.create_role_alias,
            roleAlias=ROLE_ALIAS,
            roleArn=role_arn,
            credentialDurationSeconds=3600,
        )
        created.append(f"role alias {ROLE_ALIAS}")
        return str(answer["roleAliasArn"])

    def _ensure_thing_policy(self, created: list[str]) -> None:
        document = json.dumps(thing_policy(self.names.region, self.account))
        try:
            self.iot.get_policy(policyName=THING_POLICY)
            return
        except self.iot.exceptions.ResourceNotFoundException:
            pass
        self.progress(f"creating IoT policy {THING_POLICY}")
        self._call(
            "iot create-policy",
            self.iot.create_policy,
            policyName=THING_POLICY,
            policyDocument=document,
        )
        created.append(f"IoT policy {THING_POLICY}")

    def _ensure_thing(self, created: list[str]) -> None:
        n = self.names
        try:
            self.iot.describe_thing(thingName=n.thing)
        except self.iot.exceptions.ResourceNotFoundException:
            self.progress(f"creating thing {n.thing}")
            self._call("iot create-thing", self.iot.create_thing, thingName=n.thing)
            created.append(f"thing {n.thing}")
        try:
            self.iot.describe_thing_group(thingGroupName=THING_GROUP)
        except self.iot.exceptions.ResourceNotFoundException:
            self._call(
                "iot create-thing-group", self.iot.create_thing_group, thingGroupName=THING_GROUP
            )
            created.append(f"thing group {THING_GROUP}")
        self._call(
            "iot add-thing-to-thing-group",
            self.iot.add_thing_to_thing_group,
            thingGroupName=THING_GROUP,
            thingName=n.thing,
        )

    def _principals(self) -> list[str]:
        answer = self.iot.list_thing_principals(thingName=self.names.thing)
        return [p for p in answer.get("principals", []) if ":cert/" in p]

    def _claimed_certificate(self, csr_pem: str) -> dict[str, Any] | None:
        """The description of the thing's certificate for the Pi's key (a re-install, or a
        first run cut short after AWS made it); None when the thing has no certificate yet.
        A thing that holds another key's certificate belongs to another camera: refused."""
        n = self.names
        if not self._thing_exists():
            return None
        wanted = public_key(csr_pem)
        principals = self._principals()
        for arn in principals:
            cert_id = arn.rsplit("/", 1)[1]
            desc = self.iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
            if public_key(desc["certificatePem"]) == wanted:
                return dict(desc)
        if principals:
            raise ProvisionError(
                f"thing {n.thing} already has a certificate for another key "
                f"({principals[0]}): choose another --thing, or remove that camera first "
                f"(pitsctl remove --cloud --thing {n.thing})"
            )
        return None

    def _ensure_certificate(self, csr_pem: str, created: list[str]) -> tuple[str, str]:
        """The thing's certificate for the Pi's key, else a new one from its request."""
        n = self.names
        desc = self._claimed_certificate(csr_pem)
        if desc is not None:
            if desc.get("status") != "ACTIVE":
                self._call(
                    "iot update-certificate",
                    self.iot.update_certificate,
                    certificateId=desc["certificateId"],
                    newStatus="ACTIVE",
                )
            return str(desc["certificateArn"]), str(desc["certificatePem"])
        self.progress(f"creating the certificate of {n.thing} from the Pi's signing request")
        answer = self._call(
            "iot create-certificate-from-csr",
            self.iot.create_certificate_from_csr,
            certificateSigningRequest=csr_pem,
            setAsActive=True,
        )
        created.append(f"certificate {answer['certificateId']}")
        return str(answer["certificateArn"]), str(answer["certificatePem"])

    # -- view and remove -----------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """What exists in the cloud for this camera, and whether it is wired together."""
        n = self.names
        out: dict[str, Any] = {}

        def exists(what: str, fn: Callable[[], Any]) -> bool:
            try:
                fn()
            except Exception as exc:
                if _code(exc) in ("AccessDenied", "AccessDeniedException"):
                    out[what] = "access denied"
                    return False
                out[what] = False
                return False
            out[what] = True
            return True

        exists("thing", lambda: self.iot.describe_thing(thingName=n.thing))
        exists("bucket", lambda: self.s3.head_bucket(Bucket=n.bucket))
        exists("role", lambda: self.iam.get_role(RoleName=ROLE))
        exists("role_alias", lambda: self.iot.describe_role_alias(roleAlias=ROLE_ALIAS))
        exists("thing_policy", lambda: self.iot.get_policy(policyName=THING_POLICY))
        certs = self._principals() if out["thing"] is True else []
        out["certificates"] = certs
        attached = False
        for arn in certs:
            targets = self.iot.list_attached_policies(target=arn).get("policies", [])
            attached = attached or any(p["policyName"] == THING_POLICY for p in targets)
        out["policy_attached"] = attached
        return out

    def remove(self) -> Removal:
        """Remove this camera's resources, and the shared ones once no camera uses them."""
        with _explained():
            return self._remove()

    def _remove(self) -> Removal:
        n = self.names
        done = Removal()
        if self._thing_exists():
            for arn in self._principals():
                cert_id = arn.rsplit("/", 1)[1]
                self.iot.detach_thing_principal(thingName=n.thing, principal=arn)
                for p in self.iot.list_attached_policies(target=arn).get("policies", []):
                    self.iot.detach_policy(policyName=p["policyName"], target=arn)
                self.iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
                self.iot.delete_certificate(certificateId=cert_id)
                done.removed.append(f"certificate {cert_id}")
            with contextlib.suppress(self.iot.exceptions.ResourceNotFoundException):
                self.iot.remove_thing_from_thing_group(
                    thingGroupName=THING_GROUP, thingName=n.thing
                )
            self.iot.delete_thing(thingName=n.thing)
            done.removed.append(f"thing {n.thing}")
        try:
            left = self.iot.list_things_in_thing_group(thingGroupName=THING_GROUP)["things"]
        except self.iot.exceptions.ResourceNotFoundException:
            left = None  # no group (DeleteThingGroup would succeed on it all the same)
        if left:
            done.kept.append(f"shared resources: still used by {len(left)} other camera(s)")
            return done
        shared: list[tuple[str, Callable[..., Any], dict[str, str]]] = [
            ("IoT policy", self.iot.delete_policy, {"policyName": THING_POLICY}),
            ("role alias", self.iot.delete_role_alias, {"roleAlias": ROLE_ALIAS}),
            (
                "role policy",
                self.iam.delete_role_policy,
                {"RoleName": ROLE, "PolicyName": ROLE_POLICY},
            ),
            ("IAM role", self.iam.delete_role, {"RoleName": ROLE}),
        ]
        if left is not None:
            shared.insert(
                0, ("thing group", self.iot.delete_thing_group, {"thingGroupName": THING_GROUP})
            )
        for what, fn, kwargs in shared:
            try:
                fn(**kwargs)
                done.removed.append(what)
            except Exception as exc:
                if _code(exc) not in ("ResourceNotFoundException", "NoSuchEntity"):
                    raise
        self._remove_storage(done)
        return done

    def _remove_storage(self, done: Removal) -> None:
        """The bucket and the log group, when pitsctl made them; a bucket that holds clips
        is never emptied: it is kept and said so."""
        n = self.names
        try:
            # An unknown bucket (a Pi that is gone, and no --bucket) is left alone.
            tags = self.s3.get_bucket_tagging(Bucket=n.bucket)["TagSet"] if n.bucket else []
        except Exception as exc:
            if _code(exc) not in ("NoSuchBucket", "NoSuchTagSet", "404", "NoSuchTagSetError"):
                raise
            tags = []
        if {"Key": CREATED_BY, "Value": "pitsctl"} in tags:
            listed = self.s3.list_objects_v2(Bucket=n.bucket, MaxKeys=1)
            if listed.get("KeyCount", 0):
                done.kept.append(
                    f"bucket {n.bucket}: it holds clips (delete it yourself once you no "
                    f"longer need them: aws s3 rb s3://{n.bucket} --force)"
                )
            else:
                self.s3.delete_bucket(Bucket=n.bucket)
                done.removed.append(f"bucket {n.bucket}")
        if n.log_group:
            try:
                group_tags = self.logs.list_tags_log_group(logGroupName=n.log_group)["tags"]
            except self.logs.exceptions.ResourceNotFoundException:
                group_tags = {}
            if group_tags.get(CREATED_BY) == "pitsctl":
                self.logs.delete_log_group(logGroupName=n.log_group)
                done.removed.append(f"log group {n.log_group}")

    def _thing_exists(self) -> bool:
        try:
            self.iot.describe_thing(thingName=self.names.thing)
        except self.iot.exceptions.ResourceNotFoundException:
            return False
        return True


@contextlib.contextmanager
def _explained() -> Iterator[None]:
    """Any AWS refusal not handled on the way becomes one ``ProvisionError`` line."""
    try:
        yield
    except ProvisionError:
        raise
    except Exception as exc:
        operation = getattr(exc, "operation_name", None)
        if operation is None:
            raise
        message = " ".join(
            str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).split()
        )
        hint = (
            "; grant the permissions docs/cloud.md lists (docs/alerts.md for alerts)"
            if "denied" in _code(exc).lower() or "denied" in message.lower()
            else "; run the same command again: finished steps are kept"
        )
        raise ProvisionError(f"{operation} failed: {_code(exc)}: {message}{hint}") from None


def public_key(pem: str) -> bytes:
    """The DER SubjectPublicKeyInfo of a PEM certificate or signing request: the first
    SEQUENCE in the signed part whose children are an algorithm (SEQUENCE) and a key (BIT
    STRING). Just enough DER for that, so the workstation needs no crypto library."""
    body = "".join(line.strip() for line in pem.strip().splitlines() if "-----" not in line)
    try:
        der = base64.b64decode(body, validate=True)
        (_, _, start, end), *_ = _children(der, 0, len(der))
        (_, _, signed_start, signed_end), *_ = _children(der, start, end)
        for tag, at, s, e in _children(der, signed_start, signed_end):
            inner = [t for t, _, _, _ in _children(der, s, e)] if tag == _SEQUENCE else []
            if inner == [_SEQUENCE, _BIT_STRING]:
                return der[at:e]
    except (ValueError, IndexError):
        pass
    raise ProvisionError("not a PEM certificate or signing request with a public key")


_SEQUENCE, _BIT_STRING = 0x30, 0x03


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The DER elements between ``start`` and ``end``: (tag, offset, content start, end)."""
    out = []
    at = start
    while at < end:
        tag, first = der[at], der[at + 1]
        if first < 0x80:
            content, length = at + 2, first
        else:
            count = first & 0x7F
            content, length = at + 2 + count, int.from_bytes(der[at + 2 : at + 2 + count], "big")
        if content + length > end:
            raise ValueError("truncated DER")
        out.append((tag, at, content, content + length))
        at = content + length
    return out
