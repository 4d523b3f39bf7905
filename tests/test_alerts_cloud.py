"""``pitsctl alerts`` against moto in server mode (SNS, IoT topic rules, CloudWatch alarms, S3
lifecycle, IAM, STS over real HTTP): made, re-run without change, changed, shown, removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from servers import aws_client, moto_server
from test_provision import enforce_iam

from pinthesky.installer import pitsctl
from pinthesky.installer.alerts import (
    ABORT_RULE,
    CONNECTED_RULE,
    DISCONNECTED_RULE,
    MOTION_RULE,
    PRESENCE_NAMESPACE,
    ROLE,
    TOPIC,
    AlertOptions,
    Alerts,
    local_zone,
    motion_sql,
)
from pinthesky.installer.provision import THING_GROUP, ProvisionError

REGION = "eu-west-1"
BUCKET = "cams"
FOREIGN_RULE = {
    "ID": "someone-elses",
    "Filter": {"Prefix": "backups/"},
    "Status": "Enabled",
    "Expiration": {"Days": 400},
}


@pytest.fixture
def aws(monkeypatch):
    """moto with a bucket (holding someone else's lifecycle rule) and two cameras."""
    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = aws_client("s3", endpoint, REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_lifecycle_configuration(
            Bucket=BUCKET, LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
        )
        iot = aws_client("iot", endpoint, REGION)
        iot.create_thing_group(thingGroupName=THING_GROUP)
        for thing in ("cam-a", "cam-b"):
            iot.create_thing(thingName=thing)
            iot.add_thing_to_thing_group(thingGroupName=THING_GROUP, thingName=thing)
        yield endpoint


def alerts() -> Alerts:
    return Alerts(boto3.Session(region_name=REGION), REGION, BUCKET)


def lifecycle(endpoint: str) -> dict[str, dict[str, Any]]:
    s3 = aws_client("s3", endpoint, REGION)
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    except s3.exceptions.ClientError:
        return {}
    return {r["ID"]: r for r in rules}


def subscriptions(endpoint: str) -> set[tuple[str, str]]:
    sns = aws_client("sns", endpoint, REGION)
    return {(s["Protocol"], s["Endpoint"]) for s in sns.list_subscriptions()["Subscriptions"]}


def alarms(endpoint: str) -> dict[str, dict[str, Any]]:
    cw = aws_client("cloudwatch", endpoint, REGION)
    return {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}


FULL = AlertOptions(
    emails=("me@example.com", "you@example.com"),
    sms="+4915123456789",
    https="https://hooks.example.com/pinthesky",
    offline_after=10,
    retention_days=30,
    zone="Europe/Berlin",
)


def test_alerts_are_made_and_a_rerun_changes_nothing(aws):
    made = alerts().apply(FULL)
    assert f"SNS topic {TOPIC}" in made.done and f"IoT rule {MOTION_RULE}" in made.done
    assert subscriptions(aws) == {
        ("email", "me@example.com"),
        ("email", "you@example.com"),
        ("sms", "+4915123456789"),
        ("https", "https://hooks.example.com/pinthesky"),
    }
    iot = aws_client("iot", aws, REGION)
    rule = iot.get_topic_rule(ruleName=MOTION_RULE)["rule"]
    assert rule["sql"] == motion_sql("Europe/Berlin")
    assert "FROM 'pinthesky/events/output' WHERE name = 'motion_start'" in rule["sql"]
    assert "'Europe/Berlin'" in rule["sql"] and "image.bucket_key" in rule["sql"]
    (action,) = rule["actions"]
    topic_arn = aws_client("sns", aws, REGION).list_topics()["Topics"][0]["TopicArn"]
    assert action["sns"]["targetArn"] == topic_arn and action["sns"]["roleArn"].endswith(ROLE)
    role_policy = aws_client("iam", aws).get_role_policy(
        RoleName=ROLE, PolicyName=ROLE + "-publish"
    )
    statements = role_policy["PolicyDocument"]["Statement"]
    assert {"Effect": "Allow", "Action": "sns:Publish", "Resource": topic_arn} in statements
    for name, value in ((CONNECTED_RULE, "1"), (DISCONNECTED_RULE, "0")):
        presence = iot.get_topic_rule(ruleName=name)["rule"]
        assert "$aws/events/presence/" in presence["sql"]
        metric = presence["actions"][0]["cloudwatchMetric"]
        assert metric["metricValue"] == value and metric["metricName"] == "${clientId}"
        assert metric["metricNamespace"] == PRESENCE_NAMESPACE
    found = alarms(aws)
    assert set(found) == {"pinthesky-offline-cam-a", "pinthesky-offline-cam-b"}
    alarm = found["pinthesky-offline-cam-a"]
    assert alarm["AlarmActions"] == [topic_arn] and alarm["DatapointsToAlarm"] == 10
    assert alarm["EvaluationPeriods"] == 11 and alarm["TreatMissingData"] == "notBreaching"
    assert any(m.get("Expression") == "FILL(m, REPEAT)" for m in alarm["Metrics"])
    rules = lifecycle(aws)
    assert rules["someone-elses"]["Expiration"] == {"Days": 400}  # kept
    assert rules[ABORT_RULE]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    for prefix in ("motion_videos", "capture_images"):
        rule = rules[f"pinthesky-expire-{prefix}"]
        assert rule["Expiration"] == {"Days": 30} and rule["Filter"] == {"Prefix": f"{prefix}/"}

    again = alerts().apply(FULL)
    assert again.done == []  # idempotent
    shown = alerts().view("cam-a")
    assert shown["motion_rule"] and shown["offline_after"] == 10
    assert shown["retention_days"] == 30 and shown["abort_incomplete_uploads"]
    assert len(shown["subscriptions"]) == 4


def test_changes_touch_only_what_they_name(aws):
    alerts().apply(FULL)
    # Other subscribers: the set given replaces the old one; the rest stays as it was.
    changed = alerts().apply(AlertOptions(emails=("new@example.com",)))
    assert subscriptions(aws) == {("email", "new@example.com")}
    assert "unsubscribed sms +4915123456789" in changed.done
    assert len(alarms(aws)) == 2 and lifecycle(aws)["pinthesky-expire-motion_videos"]
    # Keep clips forever: the expiry goes, the clean-up of broken uploads stays.
    alerts().apply(AlertOptions(retention_days=0))
    assert set(lifecycle(aws)) == {"someone-elses", ABORT_RULE}
    # Offline alert off; a new camera then gets no alarm.
    alerts().apply(AlertOptions(offline_after=0))
    iot = aws_client("iot", aws, REGION)
    assert alarms(aws) == {}
    assert {r["ruleName"] for r in iot.list_topic_rules()["rules"]} == {MOTION_RULE}
    # Back on at 5 minutes, and a camera joining (an install) gets its alarm too.
    alerts().apply(AlertOptions(offline_after=5), also=("cam-c",))
    assert set(alarms(aws)) == {f"pinthesky-offline-cam-{c}" for c in "abc"}
    assert {a["DatapointsToAlarm"] for a in alarms(aws).values()} == {5}


def test_off_and_the_last_camera_removed_take_everything_away(aws):
    alerts().apply(FULL)
    # One camera leaves: only its alarm goes.
    gone = alerts().forget("cam-a")
    assert gone.done == ["offline alarm pinthesky-offline-cam-a"]
    assert set(alarms(aws)) == {"pinthesky-offline-cam-b"}
    assert subscriptions(aws)
    off = alerts().apply(AlertOptions(off=True))
    assert f"SNS topic {TOPIC} and its subscriptions" in off.done
    assert alarms(aws) == {} and subscriptions(aws) == set()
    assert aws_client("iot", aws, REGION).list_topic_rules()["rules"] == []
    assert aws_client("sns", aws, REGION).list_topics()["Topics"] == []
    roles = [r["RoleName"] for r in aws_client("iam", aws).list_roles()["Roles"]]
    assert ROLE not in roles
    assert set(lifecycle(aws)) == {"someone-elses"}  # only what pinthesky made went
    assert alerts().apply(AlertOptions(off=True)).done == []  # and again: nothing to do
    # The last camera removed (none left in the group) removes every alert as well.
    alerts().apply(FULL)
    iot = aws_client("iot", aws, REGION)
    for thing in ("cam-a", "cam-b"):
        iot.remove_thing_from_thing_group(thingGroupName=THING_GROUP, thingName=thing)
    alerts().forget("cam-b")
    assert alarms(aws) == {} and aws_client("sns", aws, REGION).list_topics()["Topics"] == []


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (AlertOptions(emails=("not-an-address",)), "--email 'not-an-address'"),
        (AlertOptions(sms="0151 123"), "--sms '0151 123'"),
        (AlertOptions(https="http://example.com"), "--https 'http://example.com'"),
        (AlertOptions(offline_after=-1), "--offline-after -1"),
        (AlertOptions(retention_days=-3), "--retention-days -3"),
        (AlertOptions(offline_after=5), "--offline-after: nobody to tell"),
    ],
)
def test_bad_options_are_one_line_and_change_nothing(aws, opts, message):
    with pytest.raises(ProvisionError) as refused:
        alerts().apply(opts)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert aws_client("sns", aws, REGION).list_topics()["Topics"] == []


def test_a_refused_call_is_one_line_naming_it(aws, monkeypatch):
    """moto enforcing IAM for a user without SNS rights: one line naming the call."""
    from moto import settings as moto_settings

    iam = aws_client("iam", aws)
    iam.create_user(UserName="laptop")
    allow = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:*"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="laptop", PolicyName="p", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="laptop")["AccessKey"]
    enforce_iam(monkeypatch)
    session = boto3.Session(
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
        region_name=REGION,
    )
    with pytest.raises(ProvisionError) as refused:
        Alerts(session, REGION, BUCKET).apply(AlertOptions(emails=("me@example.com",)))
    text = str(refused.value)
    assert text.startswith("GetTopicAttributes failed: AccessDenied") and "\n" not in text
    assert "docs/alerts.md" in text
    # The lifecycle came first (S3 rights were there); an install that asks nothing of the
    # alerts is not stopped by the missing SNS rights.
    quiet = Alerts(session, REGION, BUCKET).apply(AlertOptions())
    assert any("alerts not checked" in n for n in quiet.notes) and quiet.done == []
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    assert set(lifecycle(aws)) == {"someone-elses", ABORT_RULE}


def test_pitsctl_alerts_command(aws, capsys):
    code = pitsctl.main(
        ["alerts", "--region", REGION, "--bucket", BUCKET, "--email", "me@example.com",
         "--offline-after", "15", "--retention-days", "60"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "changed in AWS: " in out and "SNS topic pinthesky-alerts" in out
    last = out.strip().splitlines()[-1]
    assert last == (
        "alerts: motion to email me@example.com; offline after 15 min; bucket keeps clips 60 days"
    )
    code = pitsctl.main(["alerts", "--region", REGION, "--bucket", BUCKET, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["changed"] == [] and result["alerts"]["retention_days"] == 60
    code = pitsctl.main(["alerts", "--region", REGION, "--bucket", BUCKET, "--sms", "12"])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines()[-1].startswith("pitsctl: --sms '12': use the")
    code = pitsctl.main(["alerts", "--region", REGION, "--bucket", BUCKET, "--off"])
    assert code == 0 and "no motion alerts; no offline alert" in capsys.readouterr().out


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A workstation where nobody ran ``aws configure``."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--sms", "12", "pitsctl: --sms '12': use the international form"),
        ("--https", "http://example.com/hook", "pitsctl: --https 'http://example.com/hook': must"),
        ("--email", "nobody", "pitsctl: --email 'nobody': not an e-mail address"),
    ],
)
def test_a_bad_option_is_named_before_aws_credentials(no_credentials, capsys, flag, value, message):
    code = pitsctl.main(["alerts", "--region", REGION, flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(message), err


def test_no_credentials_says_to_run_aws_configure(no_credentials, capsys):
    code = pitsctl.main(["alerts", "--region", REGION, "--sms", "+4915123456789"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        "pitsctl: AWS: Unable to locate credentials: run `aws configure` (or set AWS_PROFILE) "
        "on this computer"
    )


def test_local_zone(tmp_path: Path):
    assert local_zone({"TZ": "Europe/Berlin"}) == "Europe/Berlin"
    link = tmp_path / "localtime"
    zone = tmp_path / "usr/share/zoneinfo/America/New_York"
    zone.parent.mkdir(parents=True)
    zone.write_bytes(b"TZif")
    link.symlink_to(zone)
    assert local_zone({}, link) == "America/New_York"
    assert local_zone({}, tmp_path / "missing") == "UTC"


def test_install_takes_the_same_options_and_view_shows_them(aws):
    ns = pitsctl.build_parser().parse_args(
        ["install", "--host", "pi@cam", "--email", "a@example.com", "--email", "b@example.com",
         "--sms", "+4915123456789", "--offline-after", "5", "--retention-days", "14"]
    )  # fmt: skip
    opts = pitsctl._alert_options(ns)
    assert opts.emails == ("a@example.com", "b@example.com") and opts.sms == "+4915123456789"
    assert (opts.offline_after, opts.retention_days, opts.off) == (5, 14, False)
    # What install runs for a new camera (not in the thing group yet): it gets its alarm.
    alerts().apply(opts, also=("cam-new",))
    assert "pinthesky-offline-cam-new" in alarms(aws)
    shown = alerts().view("cam-new")
    pi = {
        "model": "Raspberry Pi Zero W Rev 1.1",
        "os": "Raspbian GNU/Linux 12 (bookworm)",
        "python": "3.11.2",
        "installed": {"thing": "cam-new", "region": REGION, "bucket": BUCKET},
        "version": "1.0.0",
        "services": {"pinthesky": "active"},
        "health": None,
    }
    text = pitsctl._describe("pi@cam", pi, {"thing": True, "alerts": shown})
    assert text.splitlines()[-1] == (
        "alerts: motion to email a@example.com, email b@example.com, sms +4915123456789; "
        "offline after 5 min; bucket keeps clips 14 days"
    )
