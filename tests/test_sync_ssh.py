"""`meshkit sync memory` from an ssh source: a real sshd on a loopback port, throwaway keys."""

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from tests.test_sync_helpers import SyncCase, tree, write

SSHD = "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else shutil.which("sshd")
KEYGEN = shutil.which("ssh-keygen")
SSH = shutil.which("ssh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(SSHD and KEYGEN and SSH, "openssh-server/openssh-client not installed (apt-get install openssh-server)")
class SshSource(SyncCase):
    @classmethod
    def setUpClass(cls):
        cls.ssh_dir = tempfile.mkdtemp(prefix="meshkit-sshd-")
        d = cls.ssh_dir
        for name in ("host_key", "client_key", "wrong_key"):
            subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(d, name)], check=True)
        shutil.copy(os.path.join(d, "client_key.pub"), os.path.join(d, "authorized_keys"))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)     # sshd's privilege separation directory
        cls.port = free_port()
        config = os.path.join(d, "sshd_config")
        write(config, "\n".join([
            f"Port {cls.port}", "ListenAddress 127.0.0.1", f"HostKey {d}/host_key",
            f"PidFile {d}/sshd.pid", f"AuthorizedKeysFile {d}/authorized_keys",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", ""]))
        cls.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(d, "sshd.log"), "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if cls.sshd.poll() is not None:
                why = open(os.path.join(d, "sshd.log")).read()[-300:]
                shutil.rmtree(d, ignore_errors=True)
                raise unittest.SkipTest(f"sshd did not start: {why}")
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        cls.tearDownClass()
        raise unittest.SkipTest("sshd did not listen within 10 s")

    @classmethod
    def tearDownClass(cls):
        cls.sshd.terminate()
        cls.sshd.wait(5)
        shutil.rmtree(cls.ssh_dir, ignore_errors=True)

    def remote(self, path: str) -> str:
        return f"{getpass.getuser()}@127.0.0.1:{path}"

    def ssh_sync(self, source: str, key: str = "client_key", code: int = 0):
        proc = self.meshkit("sync", "memory", "--source", source, "--dest", self.dest,
                            "--ssh-port", str(self.port), "--ssh-key", os.path.join(self.ssh_dir, key),
                            f"--ssh-option=-oUserKnownHostsFile={self.ssh_dir}/known_hosts",
                            "--ssh-option=-oStrictHostKeyChecking=accept-new")
        self.assertEqual(proc.returncode, code, f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def test_sync_over_ssh(self):
        expected = self.make_agents(3, 2)
        self.ssh_sync(self.remote(self.src))
        first = self.current()
        self.assert_current(expected)
        # incremental over ssh: only the change is copied; the rest is linked
        write(os.path.join(self.src, "agent1", "memory", "note0.json"), '{"over": "ssh"}')
        proc = self.ssh_sync(self.remote(self.src))
        self.assertEqual(self.run_line(proc)["changed"], 1)
        self.assert_current(self.expected())
        same = os.path.join("agent2", "memory", "note1.json")
        self.assertEqual(os.stat(os.path.join(self.dest, "snapshots", first, same)).st_ino,
                         os.stat(os.path.join(self.dest, "current", same)).st_ino)
        # a corrupt file over ssh is refused like a local one
        write(os.path.join(self.src, "agent0", "memory", "note1.json"), "{")
        self.ssh_sync(self.remote(self.src), code=1)
        self.assertEqual(tree(os.path.join(self.dest, "current")), self.expected() | {
            "agent0/memory/note1.json": b'{"agent": 0, "note": 1}'})

    def test_missing_remote_path_and_refused_key(self):
        self.make_agents(1, 1)
        self.ssh_sync(self.remote(self.src))
        first = self.current()
        proc = self.ssh_sync(self.remote(self.src + "-not-mounted"), code=4)
        self.assertIn("cannot be read", proc.stderr)
        proc = self.ssh_sync(self.remote(self.src), key="wrong_key", code=5)
        self.assertIn("ssh", proc.stderr)
        self.assertEqual(self.current(), first)
        self.assertEqual(self.status()["consecutive_failures"], 2)
