"""`wmpo push --to HOST:DIR` against a real sshd on loopback: real ssh, rsync and sha256sum on
the far side. The robot is an ssh host alias, as in a user's ~/.ssh/config; a second alias
reaches the same sshd through a relay that cuts the connection once a copy has sent half the
package, so a connection lost mid-copy is real too.

Needs `sshd` (Debian: openssh-server), `ssh`, `ssh-keygen` and `rsync`; skipped without them."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from policy_packages import build_package, make_keys  # noqa: E402

from wmpo_core.registry.signing import verify_package  # noqa: E402

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
TOOLS = {"sshd": SSHD, **{t: shutil.which(t) for t in ("ssh", "ssh-keygen", "rsync", "sha256sum")}}
pytestmark = pytest.mark.skipif(not all(TOOLS.values()), reason=f"missing {[t for t, p in TOOLS.items() if not p]}: "
                                "apt-get install openssh-server rsync")

# ProxyCommand: stdin/stdout <-> the sshd port; closes everything once `limit` bytes went upstream.
RELAY = r"""
import os, socket, sys, threading
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
limit, sent = int(sys.argv[2]), 0
def down():
    while data := sock.recv(65536):
        os.write(1, data)
    os._exit(0)
threading.Thread(target=down, daemon=True).start()
while data := os.read(0, 65536):
    sent += len(data)
    if sent > limit:
        sock.close()
        os._exit(1)
    sock.sendall(data)
os._exit(0)
"""


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def package_bytes(pkg: Path) -> int:
    return sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("push_pkgs")
    trusted, _ = make_keys(root / "keys")
    first = build_package(root / "v1", 1, "ssh-v1", trusted)
    second = build_package(root / "v2", 2, "ssh-v2", trusted, parent="ssh-v1")
    return trusted, first, second


@pytest.fixture(scope="module")
def robot(tmp_path_factory, packages):
    """An sshd on a free loopback port, and a bin folder whose `ssh` reads this test's client config."""
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run([TOOLS["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder, when run as root
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n")
    log = (d / "sshd.log").open("w")
    sshd = subprocess.Popen([TOOLS["sshd"], "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=log)
    _, package, _ = packages
    cut_after = package_bytes(package) // 2
    common = (f"  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n  IdentityFile {d / 'client_key'}\n"
              f"  IdentitiesOnly yes\n  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
              "  BatchMode yes\n  HostKeyAlias robot\n")
    (d / "known_hosts").write_text(f"robot {' '.join((d / 'host_key.pub').read_text().split()[:2])}\n")
    (d / "relay.py").write_text(RELAY)
    (d / "ssh_config").write_text(f"Host robot\n{common}\nHost robot-cut\n{common}"
                                  f"  ProxyCommand {sys.executable} {d / 'relay.py'} {port} {cut_after}\n")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nexec {TOOLS['ssh']} -F {d / 'ssh_config'} \"$@\"\n")
    (bin_dir / "ssh").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    try:
        deadline = time.monotonic() + 30
        while (login := subprocess.run(["ssh", "robot", "true"], env=env, capture_output=True, text=True)).returncode:
            if sshd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not accept a login: {login.stderr[-1000:]} {(d / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield env, cut_after
    finally:
        sshd.terminate()
        sshd.wait(10)
        log.close()


def wmpo_push(pkg: Path, to: str, public_key: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wmpo_core.cli", "push", str(pkg), "--to", to,
                           "--public-key", str(public_key), "--no-load", "--transport", "rsync"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_push_over_ssh_copies_verified_package_and_never_overwrites(robot, packages, tmp_path):
    env, _ = robot
    trusted, first, _ = packages
    policies = tmp_path / "robot" / "policies"
    done = wmpo_push(first, f"robot:{policies}", trusted.public_key, env)
    assert done.returncode == 0, done.stderr
    landed = policies / "ssh-v1"
    assert sorted(p.name for p in policies.iterdir()) == ["ssh-v1"]  # no temporary folder left behind
    assert {p.relative_to(landed): p.read_bytes() for p in landed.rglob("*") if p.is_file()} == \
        {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    verify_package(landed, trusted.public_key).raise_for_refusal()

    before = snapshot(policies)
    again = wmpo_push(first, f"robot:{policies}", trusted.public_key, env)
    assert again.returncode != 0 and "already exists" in again.stderr, again.stderr
    assert snapshot(policies) == before


def test_connection_cut_mid_copy_leaves_the_robot_folder_unchanged(robot, packages, tmp_path):
    env, cut_after = robot
    trusted, first, second = packages
    policies = tmp_path / "robot" / "policies"
    assert wmpo_push(first, f"robot:{policies}", trusted.public_key, env).returncode == 0
    before = snapshot(policies)
    cut = wmpo_push(second, f"robot-cut:{policies}", trusted.public_key, env)
    print(f"cut after {cut_after} of {package_bytes(second)} bytes: exit {cut.returncode}, {cut.stderr.strip()[-300:]}")
    assert cut.returncode != 0
    assert "failed at 'copy package into" in cut.stderr, cut.stderr
    assert snapshot(policies) == before  # no partial package, no temporary folder, the earlier one untouched
    # The same push over an intact connection then succeeds.
    assert wmpo_push(second, f"robot:{policies}", trusted.public_key, env).returncode == 0
    verify_package(policies / "ssh-v2", trusted.public_key).raise_for_refusal()
