"""The page and RTSP found on the network by mDNS: the service file ``pitsctl`` writes for Avahi,
read by Debian's avahi-daemon, found by an mDNS browser: python-zeroconf, the library Home
Assistant discovers devices with (``_http._tcp`` and ``_rtsp._tcp``, each instance resolved).

Avahi does not answer on the loopback interface, and these tests never reach a real network:
it runs in a network namespace of its own (``unshare --net --mount``) on one end of a veth pair,
the query goes out of the other end, and both vanish with the namespace. Needs root, as
``make test`` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pinthesky.installer import onpi

HOST_NAME = "gardencam"
AVAHI_CONF = f"""[server]
host-name={HOST_NAME}
use-ipv4=yes
use-ipv6=no
allow-interfaces=pt0
enable-dbus=no
[publish]
publish-hinfo=no
publish-workstation=no
[wide-area]
enable-wide-area=no
"""
# In the namespace: a veth pair (pt0 for Avahi, pt1 for the browser), packets from one local
# address to another accepted (both ends are this namespace's), /run and Avahi's service
# directory replaced by the test's, Avahi in the foreground until the browser is done.
NAMESPACE = """set -e
ip link set lo up
ip link add pt0 type veth peer name pt1
ip addr add 10.77.0.1/24 dev pt0
ip addr add 10.77.0.2/24 dev pt1
ip link set pt0 up multicast on
ip link set pt1 up multicast on
for key in all/accept_local pt0/accept_local pt1/accept_local; do
    echo 1 > /proc/sys/net/ipv4/conf/$key
done
for key in all/rp_filter pt0/rp_filter pt1/rp_filter; do
    echo 0 > /proc/sys/net/ipv4/conf/$key
done
mount -t tmpfs tmpfs /run
mount --bind "$SERVICES" /etc/avahi/services
avahi-daemon --file="$CONF" --no-drop-root --no-chroot --no-rlimits 2>"$LOG" &
avahi=$!
"$PYTHON" "$BROWSE" 10.77.0.2 || status=$?
kill $avahi
wait $avahi || true
exit ${status:-0}
"""
BROWSE = """
import json, sys, threading
from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

KINDS = ("_http._tcp.local.", "_rtsp._tcp.local.")
found = {}
changed = threading.Condition()

class Resolve(ServiceListener):
    # zeroconf's thread: each instance found is resolved (SRV, TXT, addresses).
    def add_service(self, zc, kind, name):
        info = zc.get_service_info(kind, name, timeout=5000)
        with changed:
            found.setdefault(kind, []).append({
                "name": name,
                "server": info.server if info else None,
                "port": info.port if info else None,
                "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
                if info else {},
                "addresses": info.parsed_addresses(IPVersion.V4Only) if info else [],
            })
            changed.notify_all()

    def update_service(self, zc, kind, name):
        pass

    def remove_service(self, zc, kind, name):
        pass

zc = Zeroconf(interfaces=[sys.argv[1]], ip_version=IPVersion.V4Only)
browsers = [ServiceBrowser(zc, kind, Resolve()) for kind in KINDS]
with changed:
    # Avahi probes its names for a second or two before it answers; once it has answered,
    # a type that is not found within 3 s more is not announced.
    changed.wait_for(lambda: found, 15)
    changed.wait_for(lambda: len(found) == len(KINDS), 3)
zc.close()
print(json.dumps(found))
"""


def browse(tmp: Path, services: Path) -> dict[str, dict[str, Any]]:
    """What Avahi, serving ``services``, answers to PTR queries for the page and RTSP."""
    for tool in ("unshare", "ip", "avahi-daemon"):
        assert shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists(), f"{tool} (make test)"
    assert os.geteuid() == 0, "the mDNS test makes a network namespace: run it as root"
    (tmp / "avahi.conf").write_text(AVAHI_CONF)
    (tmp / "browse.py").write_text(BROWSE)
    script = tmp / "namespace.sh"
    script.write_text(NAMESPACE)
    env = {
        "PATH": f"/usr/sbin:/usr/bin:/sbin:/bin:{os.environ.get('PATH', '')}",
        "SERVICES": str(services),
        "CONF": str(tmp / "avahi.conf"),
        "LOG": str(tmp / "avahi.log"),
        "PYTHON": sys.executable,
        "BROWSE": str(tmp / "browse.py"),
    }
    done = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", "bash", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    avahi_log = (tmp / "avahi.log").read_text() if (tmp / "avahi.log").exists() else ""
    assert done.returncode == 0, done.stderr + avahi_log
    found: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def settings(target: Path, text: str) -> onpi.Host:
    config = target / "etc/pinthesky/pinthesky.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    (target / "etc/avahi/services").mkdir(parents=True, exist_ok=True)
    return onpi.Host(str(target))


def test_avahi_announces_the_page_and_rtsp_under_the_cameras_name(tmp_path: Path) -> None:
    target = tmp_path / "pi"
    host = settings(target, "[http]\nport = 8080\n\n[rtsp]\nport = 8554\n")
    assert onpi.announce(host)
    found = browse(tmp_path, target / "etc/avahi/services")
    address = ["10.77.0.1"]
    assert found["_http._tcp.local."] == [
        {"name": f"{HOST_NAME}._http._tcp.local.", "server": f"{HOST_NAME}.local.",
         "port": 8080, "txt": {"path": "/"}, "addresses": address},
    ]  # fmt: skip
    assert found["_rtsp._tcp.local."] == [
        {"name": f"{HOST_NAME}._rtsp._tcp.local.", "server": f"{HOST_NAME}.local.",
         "port": 8554, "txt": {"path": "/live"}, "addresses": address},
    ]  # fmt: skip


def test_a_cloud_camera_goes_by_its_thing_and_only_what_is_on_is_announced(
    tmp_path: Path,
) -> None:
    target = tmp_path / "pi"
    host = settings(
        target, '[cloud_connection]\nthing_name = "front-door"\n\n[rtsp]\nport = 8555\n'
    )
    assert onpi.announce(host)
    found = browse(tmp_path, target / "etc/avahi/services")
    assert "_http._tcp.local." not in found  # the page is off
    [rtsp] = found["_rtsp._tcp.local."]
    assert rtsp["name"] == "front-door._rtsp._tcp.local." and rtsp["port"] == 8555
    # Both off: the file goes, nothing is announced.
    settings(target, "[rtsp]\nport = 0\n")
    assert not onpi.announce(host)
    assert not (target / "etc/avahi/services/pinthesky.service").exists()


def test_without_avahi_nothing_is_written(tmp_path: Path) -> None:
    target = tmp_path / "pi"
    config = target / "etc/pinthesky/pinthesky.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[http]\nport = 8080\n")
    assert onpi.announce(onpi.Host(str(target))) is False
    assert not (target / "etc/avahi").exists()
