"""What ``pitsctl alerts`` sets up in AWS, with the workstation's own credentials (boto3).

Shared by every camera of the account and region (nothing runs on a server of ours):

- the SNS topic ``pinthesky-alerts`` and its subscriptions (e-mail, SMS, HTTPS);
- the IoT topic rule ``pinthesky_motion_start``: every ``motion_start`` that a pinthesky camera
  publishes on ``pinthesky/events/output`` (only cameras may publish there: the thing policy)
  becomes a short message on the topic: camera, local time, the picture's S3 key;
- for the offline alert, the rules ``pinthesky_connected`` and ``pinthesky_disconnected``: AWS
  IoT's lifecycle events of each client become a CloudWatch metric (namespace
  ``Pinthesky/Presence``, one metric per client, 1 connected, 0 disconnected), and per camera of
  the ``pinthesky`` thing group the alarm ``pinthesky-offline-<thing>``. A metric only has a
  value when the camera connects or disconnects, so the alarm fills the minutes between with
  the last value (``FILL(m, REPEAT)``) and fires once the camera has been disconnected for
  every one of the given minutes; a camera that comes back sooner sends nothing;
- the IAM role ``pinthesky-alerts`` that lets those rules publish to the topic and write the
  metric;
- the bucket's lifecycle rules ``pinthesky-*``: incomplete multipart uploads aborted after a day
  (always), clips and pictures expired after the given days. Lifecycle rules of others are kept.

Options that are not given leave their part as it is, so a re-run changes only what it names;
``--offline-after 0`` and ``--retention-days 0`` turn those parts off, ``--off`` removes all of
it. Every AWS refusal is one ``ProvisionError`` line naming the call.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinthesky.installer.provision import THING_GROUP, ProvisionError, _code, _explained

TOPIC = "pinthesky-alerts"
ROLE = "pinthesky-alerts"
ROLE_POLICY = "pinthesky-alerts-publish"
MOTION_RULE = "pinthesky_motion_start"
CONNECTED_RULE = "pinthesky_connected"
DISCONNECTED_RULE = "pinthesky_disconnected"
PRESENCE_NAMESPACE = "Pinthesky/Presence"
ALARM_PREFIX = "pinthesky-offline-"
LIFECYCLE_PREFIX = "pinthesky-"
ABORT_RULE = "pinthesky-abort-incomplete-uploads"
EVENTS_TOPIC = "pinthesky/events/output"
ABORT_AFTER_DAYS = 1
_NOT_FOUND = {
    "ResourceNotFoundException",
    "NotFoundException",
    "NotFound",
    "NoSuchEntity",
    "NoSuchBucket",
    "NoSuchLifecycleConfiguration",
    "UnauthorizedException",  # moto and IoT answer an unknown rule so
}

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
SMS = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True)
class AlertOptions:
    """What the user asked for; ``None`` (and no subscriptions) leaves that part as it is."""

    emails: tuple[str, ...] = ()
    sms: str | None = None
    https: str | None = None
    offline_after: int | None = None
    """Minutes a camera must be offline before the alert; 0 turns the offline alert off."""
    retention_days: int | None = None
    """Days clips and pictures are kept in the bucket; 0 keeps them forever."""
    off: bool = False
    zone: str = "UTC"
    """Time zone of the local time in motion messages (an IANA name)."""

    def subscriptions(self) -> set[tuple[str, str]]:
        subs = {("email", e) for e in self.emails}
        if self.sms:
            subs.add(("sms", self.sms))
        if self.https:
            subs.add(("https", self.https))
        return subs

    def check(self) -> None:
        """ProvisionError naming the first bad option."""
        for e in self.emails:
            if not EMAIL.fullmatch(e):
                raise ProvisionError(f"--email {e!r}: not an e-mail address")
        if self.sms is not None and not SMS.fullmatch(self.sms):
            raise ProvisionError(
                f"--sms {self.sms!r}: use the international form, e.g. +4915123456789"
            )
        if self.https is not None and not self.https.startswith("https://"):
            raise ProvisionError(f"--https {self.https!r}: must be an https:// URL")
        if self.offline_after is not None and not 0 <= self.offline_after <= 1439:
            raise ProvisionError(
                f"--offline-after {self.offline_after}: 1 to 1439 minutes (0: off)"
            )
        if self.retention_days is not None and not 0 <= self.retention_days <= 36500:
            raise ProvisionError(f"--retention-days {self.retention_days}: 1 to 36500 (0: forever)")


@dataclass
class Changes:
    done: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def local_zone(
    environ: dict[str, str] | None = None, localtime: Path = Path("/etc/localtime")
) -> str:
    """The workstation's IANA time zone (``TZ``, else where /etc/localtime points), or UTC."""
    env = os.environ if environ is None else environ
    tz = env.get("TZ", "").lstrip(":")
    if re.fullmatch(r"[A-Za-z_]+(/[A-Za-z0-9_+-]+)*", tz):
        return tz
    try:
        target = str(localtime.resolve())
    except OSError:
        return "UTC"
    _, sep, name = target.partition("zoneinfo/")
    return name if sep and name else "UTC"


def motion_sql(zone: str) -> str:
    """The motion rule's query: a few readable fields of each ``motion_start``."""
    picture = (
        "CASE isUndefined(image.bucket_key) "
        "WHEN true THEN 'not in S3 yet (it follows with the clip)' "
        "ELSE concat('s3://', image.bucket_name, '/', image.bucket_key) END"
    )
    return (
        "SELECT concat('Motion at camera ', thing_name) AS alert, thing_name AS camera, "
        f"parse_time('yyyy-MM-dd HH:mm:ss z', timestamp * 1000, '{zone}') AS local_time, "
        f"{picture} AS picture FROM '{EVENTS_TOPIC}' WHERE name = 'motion_start'"
    )


def alarm_name(thing: str) -> str:
    return ALARM_PREFIX + thing


class Alerts:
    """Sets up, shows and removes the alerts (blocking calls)."""

    def __init__(
        self,
        session: Any,
        region: str,
        bucket: str | None,
        prefixes: tuple[str, ...] = ("motion_videos", "capture_images"),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.region = region
        self.bucket = bucket
        self.prefixes = prefixes
        self.progress = progress or (lambda _: None)
        self.sns = session.client("sns", region_name=region)
        self.iot = session.client("iot", region_name=region)
        self.iam = session.client("iam", region_name=region)
        self.cloudwatch = session.client("cloudwatch", region_name=region)
        self.s3 = session.client("s3", region_name=region)
        self.sts = session.client("sts", region_name=region)

    # -- set up ---------------------------------------------------------------------------

    def apply(self, opts: AlertOptions, also: tuple[str, ...] = ()) -> Changes:
        """Make AWS match ``opts``; ``also`` names cameras about to join the thing group."""
        opts.check()
        with _explained():
            if opts.off:
                return self._remove_all()
            return self._apply(opts, also)

    def _apply(self, opts: AlertOptions, also: tuple[str, ...]) -> Changes:
        out = Changes()
        self._lifecycle(opts.retention_days, out)
        wanted = opts.subscriptions()
        try:
            topic = self._topic_arn()
        except Exception as exc:
            if wanted or opts.offline_after is not None or "denied" not in _code(exc).lower():
                raise
            # Nothing about alerts was asked (an install): credentials without SNS rights
            # only mean the alerts are not looked at.
            out.notes.append(f"alerts not checked: {_code(exc)} on SNS GetTopicAttributes")
            return out
        if topic is None and not wanted:
            if opts.offline_after:
                raise ProvisionError(
                    "--offline-after: nobody to tell; give --email, --sms or --https too"
                )
            out.notes.append("no alerts: give --email, --sms or --https to be told of motion")
            return out
        if topic is None:
            topic = self.sns.create_topic(
                Name=TOPIC, Tags=[{"Key": "created-by", "Value": "pitsctl"}]
            )["TopicArn"]
            out.done.append(f"SNS topic {TOPIC}")
        if wanted:
            self._subscriptions(topic, wanted, out)
        role = self._role(topic, out)
        sns = {"sns": {"targetArn": topic, "roleArn": role, "messageFormat": "RAW"}}
        self._rule(MOTION_RULE, motion_sql(opts.zone), [sns], "motion_start to SNS", out)
        minutes = opts.offline_after
        if minutes is None:
            minutes = self._offline_minutes()
        if minutes:
            for rule, value in ((CONNECTED_RULE, "1"), (DISCONNECTED_RULE, "0")):
                kind = rule.removeprefix("pinthesky_")
                action = {
                    "cloudwatchMetric": {
                        "roleArn": role,
                        "metricNamespace": PRESENCE_NAMESPACE,
                        "metricName": "${clientId}",
                        "metricValue": value,
                        "metricUnit": "None",
                    }
                }
                sql = f"SELECT clientId FROM '$aws/events/presence/{kind}/+'"
                self._rule(rule, sql, [action], f"{kind} events to CloudWatch", out)
            self._alarms(topic, minutes, also, out)
        elif opts.offline_after == 0:
            self._remove_offline(out)
        return out

    def _topic_arn(self) -> str | None:
        account = self.sts.get_caller_identity()["Account"]
        arn = f"arn:aws:sns:{self.region}:{account}:{TOPIC}"
        try:
            self.sns.get_topic_attributes(TopicArn=arn)
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            return None
        return arn

    def _subscriptions(self, topic: str, wanted: set[tuple[str, str]], out: Changes) -> None:
        have = {
            (s["Protocol"], s["Endpoint"]): s["SubscriptionArn"] for s in self._subscribed(topic)
        }
        for protocol, endpoint in sorted(wanted - have.keys()):
            self.sns.subscribe(TopicArn=topic, Protocol=protocol, Endpoint=endpoint)
            out.done.append(f"subscribed {protocol} {endpoint}")
            if protocol != "sms":
                out.notes.append(f"{endpoint}: confirm the subscription from the message AWS sends")
        for (protocol, endpoint), arn in sorted(have.items()):
            if (protocol, endpoint) in wanted:
                continue
            if arn.startswith("arn:"):
                self.sns.unsubscribe(SubscriptionArn=arn)
                out.done.append(f"unsubscribed {protocol} {endpoint}")
            else:  # never confirmed: SNS forgets it by itself after three days
                out.notes.append(
                    f"{protocol} {endpoint}: still pending confirmation, left to expire"
                )

    def _subscribed(self, topic: str) -> list[dict[str, str]]:
        subs: list[dict[str, str]] = []
        kwargs: dict[str, str] = {"TopicArn": topic}
        while True:
            page = self.sns.list_subscriptions_by_topic(**kwargs)
            subs.extend(page.get("Subscriptions", []))
            if not page.get("NextToken"):
                return subs
            kwargs["NextToken"] = page["NextToken"]

    def _role(self, topic: str, out: Changes) -> str:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "iot.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        try:
            arn = str(self.iam.get_role(RoleName=ROLE)["Role"]["Arn"])
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            arn = str(
                self.iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))[
                    "Role"
                ]["Arn"]
            )
            out.done.append(f"IAM role {ROLE}")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "sns:Publish", "Resource": topic},
                {
                    "Effect": "Allow",
                    "Action": "cloudwatch:PutMetricData",
                    "Resource": "*",
                    "Condition": {"StringEquals": {"cloudwatch:namespace": PRESENCE_NAMESPACE}},
                },
            ],
        }
        self.iam.put_role_policy(
            RoleName=ROLE, PolicyName=ROLE_POLICY, PolicyDocument=json.dumps(policy)
        )
        return arn

    def _rule(
        self, name: str, sql: str, actions: list[dict[str, Any]], what: str, out: Changes
    ) -> None:
        payload = {
            "sql": sql,
            "awsIotSqlVersion": "2016-03-23",
            "ruleDisabled": False,
            "description": f"pinthesky alerts: {what} (made by pitsctl)",
            "actions": actions,
        }
        current = self._get_rule(name)
        if current is None:
            self.iot.create_topic_rule(ruleName=name, topicRulePayload=payload)
            out.done.append(f"IoT rule {name}")
        elif current.get("sql") != sql or current.get("actions") != actions:
            self.iot.replace_topic_rule(ruleName=name, topicRulePayload=payload)
            out.done.append(f"IoT rule {name} updated")

    def _get_rule(self, name: str) -> dict[str, Any] | None:
        try:
            rule: dict[str, Any] = self.iot.get_topic_rule(ruleName=name)["rule"]
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            return None
        return rule

    def _cameras(self) -> list[str]:
        try:
            pages = self.iot.get_paginator("list_things_in_thing_group").paginate(
                thingGroupName=THING_GROUP
            )
            return [t for page in pages for t in page.get("things", [])]
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            return []

    def _our_alarms(self) -> list[dict[str, Any]]:
        alarms: list[dict[str, Any]] = []
        for page in self.cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNamePrefix=ALARM_PREFIX
        ):
            alarms.extend(page.get("MetricAlarms", []))
        return alarms

    def _offline_minutes(self) -> int:
        """The minutes of the offline alert in place (0: none)."""
        alarms = self._our_alarms()
        return int(alarms[0].get("DatapointsToAlarm") or 0) if alarms else 0

    def _alarms(self, topic: str, minutes: int, also: tuple[str, ...], out: Changes) -> None:
        cameras = sorted({*self._cameras(), *also})
        existing = {a["AlarmName"]: a for a in self._our_alarms()}
        for thing in cameras:
            name = alarm_name(thing)
            old = existing.pop(name, None)
            if old is not None and old.get("DatapointsToAlarm") == minutes:
                continue
            self.cloudwatch.put_metric_alarm(
                AlarmName=name,
                AlarmDescription=(
                    f"pinthesky camera {thing} has been offline for {minutes} minutes "
                    "(no connection to AWS IoT)"
                ),
                ActionsEnabled=True,
                AlarmActions=[topic],
                Metrics=[
                    {
                        "Id": "m",
                        "MetricStat": {
                            "Metric": {"Namespace": PRESENCE_NAMESPACE, "MetricName": thing},
                            "Period": 60,
                            "Stat": "Minimum",
                        },
                        "ReturnData": False,
                    },
                    {
                        # The metric has values only when the camera connects or
                        # disconnects: carry the last one over the minutes between.
                        "Id": "online",
                        "Expression": "FILL(m, REPEAT)",
                        "Label": f"{thing} connected",
                        "ReturnData": True,
                    },
                ],
                # One minute more than asked: the disconnect itself stays in the window.
                EvaluationPeriods=minutes + 1,
                DatapointsToAlarm=minutes,
                Threshold=1.0,
                ComparisonOperator="LessThanThreshold",
                TreatMissingData="notBreaching",
            )
            out.done.append(f"offline alarm {name} ({minutes} min)")
        if existing:
            self.cloudwatch.delete_alarms(AlarmNames=sorted(existing))
            out.done.extend(f"offline alarm {n} (camera gone)" for n in sorted(existing))

    def _lifecycle(self, retention_days: int | None, out: Changes) -> None:
        if not self.bucket:
            return
        rules = self._lifecycle_rules()
        if rules is None:
            out.notes.append(f"bucket {self.bucket} does not exist (yet): no lifecycle rules")
            return
        ours = {r["ID"]: r for r in rules if str(r.get("ID", "")).startswith(LIFECYCLE_PREFIX)}
        others = [r for r in rules if r.get("ID") not in ours]
        wanted: dict[str, dict[str, Any]] = {
            ABORT_RULE: {
                "ID": ABORT_RULE,
                "Filter": {"Prefix": ""},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_AFTER_DAYS},
            }
        }
        if retention_days is None:  # keep the expiry in place
            wanted.update({k: v for k, v in ours.items() if k != ABORT_RULE})
        elif retention_days > 0:
            for prefix in self.prefixes:
                rid = f"{LIFECYCLE_PREFIX}expire-{prefix}"
                wanted[rid] = {
                    "ID": rid,
                    "Filter": {"Prefix": f"{prefix}/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": retention_days},
                }
        if _normal(ours) == _normal(wanted):
            return
        self.s3.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": [*others, *wanted.values()]}
        )
        expiry = [r for r in wanted.values() if "Expiration" in r]
        out.done.append(
            f"bucket {self.bucket} lifecycle: incomplete uploads aborted after "
            f"{ABORT_AFTER_DAYS} day, "
            + (
                f"clips and pictures expire after {expiry[0]['Expiration']['Days']} days"
                if expiry
                else "clips and pictures kept"
            )
        )

    def _lifecycle_rules(self) -> list[dict[str, Any]] | None:
        """The bucket's lifecycle rules ([] for none); None when there is no bucket."""
        try:
            rules: list[dict[str, Any]] = self.s3.get_bucket_lifecycle_configuration(
                Bucket=self.bucket
            )["Rules"]
        except Exception as exc:
            code = _code(exc)
            if code == "NoSuchLifecycleConfiguration":
                return []
            if code in ("NoSuchBucket", "404"):
                return None
            raise
        return rules

    # -- view -------------------------------------------------------------------------------

    def view(self, thing: str | None = None) -> dict[str, Any]:
        """What is set up: topic, subscriptions, rules, this camera's offline alarm, lifecycle."""
        with _explained():
            topic = self._topic_arn()
            out: dict[str, Any] = {
                "topic": topic,
                "subscriptions": [
                    {
                        "protocol": s["Protocol"],
                        "endpoint": s["Endpoint"],
                        "confirmed": s["SubscriptionArn"].startswith("arn:"),
                    }
                    for s in sorted(
                        self._subscribed(topic) if topic else [],
                        key=lambda s: (s["Protocol"], s["Endpoint"]),
                    )
                ],
                "motion_rule": self._get_rule(MOTION_RULE) is not None,
                "offline_after": None,
            }
            for alarm in self._our_alarms():
                if thing is None or alarm["AlarmName"] == alarm_name(thing):
                    out["offline_after"] = alarm.get("DatapointsToAlarm")
            rules = (self._lifecycle_rules() or []) if self.bucket else []
            ours = [r for r in rules if str(r.get("ID", "")).startswith(LIFECYCLE_PREFIX)]
            out["retention_days"] = next(
                (r["Expiration"]["Days"] for r in ours if "Expiration" in r), None
            )
            out["abort_incomplete_uploads"] = any(r.get("ID") == ABORT_RULE for r in ours)
            return out

    # -- remove -----------------------------------------------------------------------------

    def forget(self, thing: str) -> Changes:
        """A camera was removed: its offline alarm goes; with the last camera, everything.

        Credentials without the alerts' rights (someone who never set them up) are a note,
        not a failed removal.
        """
        try:
            return self._forget(thing)
        except ProvisionError as exc:
            if "denied" not in str(exc).lower():
                raise
            return Changes(notes=[f"alerts not removed: {exc}"])

    def _forget(self, thing: str) -> Changes:
        with _explained():
            out = Changes()
            if self._cameras():
                names = [a["AlarmName"] for a in self._our_alarms()]
                if alarm_name(thing) in names:
                    self.cloudwatch.delete_alarms(AlarmNames=[alarm_name(thing)])
                    out.done.append(f"offline alarm {alarm_name(thing)}")
                return out
            return self._remove_all()

    def _remove_all(self) -> Changes:
        out = Changes()
        self._remove_offline(out)
        self._delete_rule(MOTION_RULE, out)
        topic = self._topic_arn()
        if topic is not None:
            self.sns.delete_topic(TopicArn=topic)  # its subscriptions go with it
            out.done.append(f"SNS topic {TOPIC} and its subscriptions")
        try:
            self.iam.delete_role_policy(RoleName=ROLE, PolicyName=ROLE_POLICY)
            self.iam.delete_role(RoleName=ROLE)
            out.done.append(f"IAM role {ROLE}")
        except Exception as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
        rules = self._lifecycle_rules() if self.bucket else None
        if rules:
            others = [r for r in rules if not str(r.get("ID", "")).startswith(LIFECYCLE_PREFIX)]
            if len(others) != len(rules):
                if others:
                    self.s3.put_bucket_lifecycle_configuration(
                        Bucket=self.bucket, LifecycleConfiguration={"Rules": others}
                    )
                else:
                    self.s3.delete_bucket_lifecycle(Bucket=self.bucket)
                out.done.append(f"bucket {self.bucket} lifecycle rules of pinthesky")
        return out

    def _remove_offline(self, out: Changes) -> None:
        names = sorted(a["AlarmName"] for a in self._our_alarms())
        if names:
            self.cloudwatch.delete_alarms(AlarmNames=names)
            out.done.extend(f"offline alarm {n}" for n in names)
        for rule in (CONNECTED_RULE, DISCONNECTED_RULE):
            self._delete_rule(rule, out)

    def _delete_rule(self, name: str, out: Changes) -> None:
        if self._get_rule(name) is None:
            return
        self.iot.delete_topic_rule(ruleName=name)
        out.done.append(f"IoT rule {name}")


def _normal(rules: dict[str, dict[str, Any]]) -> str:
    """Rules compared by what they do (S3 may add or reorder fields)."""
    keep = ("ID", "Status", "Expiration", "AbortIncompleteMultipartUpload")
    return json.dumps(
        {k: {f: r.get(f) for f in keep} | {"Prefix": _prefix(r)} for k, r in rules.items()},
        sort_keys=True,
    )


def _prefix(rule: dict[str, Any]) -> str:
    f = rule.get("Filter") or {}
    return str(f.get("Prefix", rule.get("Prefix", "")))
