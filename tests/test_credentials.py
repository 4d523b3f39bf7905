"""The AWS IoT credentials provider client against a local mutual-TLS stand-in."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from servers import CredentialsProvider, Pki

from pinthesky.cloud.credentials import (
    CredentialsError,
    IotCredentialsProvider,
    IotIdentity,
    check_key_permissions,
    refreshable,
)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "certs")


def identity(pki: Pki, server: CredentialsProvider, **kw) -> IotIdentity:  # type: ignore[no-untyped-def]
    fields = {
        "endpoint": server.endpoint,
        "role_alias": "pits-role",
        "thing_name": "cam1",
        "cert": pki.cert_file,
        "key": pki.key_file,
        "ca": pki.ca_file,
    }
    fields.update(kw)
    return IotIdentity(**fields)


def test_fetches_credentials_with_the_device_certificate(pki):
    with CredentialsProvider(pki) as server:
        creds = IotCredentialsProvider(identity(pki, server)).fetch()
    assert creds["access_key"].startswith("ASIA") and creds["token"] == "token"
    assert server.requests == [{"path": "/role-aliases/pits-role/credentials", "thing": "cam1"}]


def test_https_prefix_and_default_port_are_understood(pki):
    with CredentialsProvider(pki) as server:
        ident = identity(pki, server, endpoint=f"https://127.0.0.1:{server.port}/")
        assert IotCredentialsProvider(ident).fetch()["secret_key"] == "secret"


def test_botocore_refreshes_before_expiry(pki):
    now = [datetime.now(UTC)]
    with CredentialsProvider(pki, lifetime_s=3600) as server:
        provider = IotCredentialsProvider(identity(pki, server))
        creds = refreshable(provider, time_fetcher=lambda: now[0])
        first = creds.get_frozen_credentials()
        assert provider.fetches == 1
        now[0] += timedelta(minutes=40)  # 20 minutes left: no refresh needed yet
        assert creds.get_frozen_credentials() == first and provider.fetches == 1
        now[0] += timedelta(minutes=11)  # 9 minutes left: inside botocore's mandatory window
        second = creds.get_frozen_credentials()
        assert provider.fetches == 2 and second.access_key != first.access_key


def test_refused_device_is_an_identity_error(pki):
    with CredentialsProvider(pki) as server:
        server.status = 403
        with pytest.raises(CredentialsError, match="refused this device") as err:
            IotCredentialsProvider(identity(pki, server)).fetch()
    assert err.value.identity


def test_wrong_role_alias_is_a_clear_error(pki):
    with CredentialsProvider(pki) as server, pytest.raises(CredentialsError, match="HTTP 404"):
        IotCredentialsProvider(identity(pki, server, role_alias="nope")).fetch()


def test_unknown_ca_and_foreign_certificate_fail_tls(pki, tmp_path):
    other = Pki(tmp_path / "other")
    with CredentialsProvider(pki) as server:
        # The server's certificate is not signed by the CA we trust.
        with pytest.raises(CredentialsError, match="TLS failed") as err:
            IotCredentialsProvider(identity(pki, server, ca=other.ca_file)).fetch()
        assert err.value.identity
        # Our certificate is not one the endpoint knows.
        with pytest.raises(CredentialsError, match="credentials provider"):
            IotCredentialsProvider(
                identity(pki, server, cert=other.cert_file, key=other.key_file)
            ).fetch()


def test_an_endpoint_that_is_not_a_credentials_provider(pki):
    with CredentialsProvider(pki) as server:
        server.body = b"<html>hello</html>"
        with pytest.raises(CredentialsError, match="not AWS IoT credentials"):
            IotCredentialsProvider(identity(pki, server)).fetch()


def test_unreachable_endpoint_is_one_line(pki):
    from servers import free_port

    ident = IotIdentity(
        f"127.0.0.1:{free_port()}", "a", "cam1", pki.cert_file, pki.key_file, pki.ca_file
    )
    with pytest.raises(CredentialsError, match="unreachable"):
        IotCredentialsProvider(ident, timeout=2).fetch()


def test_private_key_readable_by_others_is_refused(pki):
    os.chmod(pki.key_file, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        check_key_permissions(pki.key_file)


def test_missing_certificate_is_one_line(pki, tmp_path):
    ident = IotIdentity("127.0.0.1:1", "a", "cam1", tmp_path / "nope.pem", pki.key_file, None)
    provider = IotCredentialsProvider(ident)  # the daemon starts: the file may come later
    with pytest.raises(CredentialsError, match="cannot load") as err:
        provider.fetch()
    assert err.value.identity  # retried slowly
