"""systemd units: what each must say, the start-limit arithmetic, `systemd-analyze verify`
on every unit in systemd/ and on the ones `python -m meshkit systemd ROLE` prints."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tests.helpers import ROOT, meshkit

from meshkit.cli import cmd_systemd
from meshkit.rules.config import parse_config, render_default_toml

UNIT_DIR = os.path.join(ROOT, "systemd")
MINE = {"meshkit-supervisor.service": "-500", "meshkit-worker.service": "500", "meshkit-watchdog.service": None}
# Exit codes no restart can fix: 2 bad config or usage, 3 the worker's key refused for good.
# (The supervisor's listen address in use by another process is 75, which restarts.)
NO_RESTART = {"meshkit-supervisor.service": {"2"}, "meshkit-worker.service": {"2", "3"},
              "meshkit-watchdog.service": {"2"}}
ANALYZE = shutil.which("systemd-analyze")

# Sandboxing, role by role (README: "Deploying with systemd"). The supervisor runs no other
# program; the watchdog and the sync units run ssh, rsync and the operator's fence/alert
# commands; the worker runs any allowlisted task program, so it keeps only what no ordinary
# program needs. Each key: its values, in order; None: must not be set.
STRICT = {"CapabilityBoundingSet": [""], "AmbientCapabilities": [""], "NoNewPrivileges": ["yes"],
          "PrivateDevices": ["yes"], "PrivateMounts": ["yes"], "ProtectProc": ["invisible"],
          "ProtectClock": ["yes"], "ProtectHostname": ["yes"], "ProtectKernelLogs": ["yes"],
          "ProtectKernelTunables": ["yes"], "ProtectKernelModules": ["yes"], "ProtectControlGroups": ["yes"],
          "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"], "RestrictNamespaces": ["yes"],
          "RestrictRealtime": ["yes"], "RestrictSUIDSGID": ["yes"], "LockPersonality": ["yes"],
          "MemoryDenyWriteExecute": ["yes"], "SystemCallArchitectures": ["native"],
          "SystemCallFilter": ["@system-service"], "SystemCallErrorNumber": ["EPERM"], "UMask": ["0027"]}
# a fence command that needs a JIT (node, java) would crash on the failover path
WATCHDOG = dict(STRICT, MemoryDenyWriteExecute=None)
WORKER = {"CapabilityBoundingSet": [""], "AmbientCapabilities": [""], "NoNewPrivileges": ["yes"],
          "PrivateMounts": ["yes"], "ProtectHostname": ["yes"], "ProtectKernelLogs": ["yes"],
          "ProtectKernelTunables": ["yes"], "ProtectKernelModules": ["yes"], "ProtectControlGroups": ["yes"],
          "RestrictRealtime": ["yes"], "RestrictSUIDSGID": ["yes"], "LockPersonality": ["yes"], "UMask": ["0027"],
          # GPUs (/dev/nvidia*), ps, browser sandboxes and containers, ip, 32-bit binaries, debuggers, JITs;
          # ProtectClock: on systemd < 253 its implied DeviceAllow=char-rtc shuts every other device
          "PrivateDevices": None, "ProtectClock": None, "ProtectProc": None, "RestrictNamespaces": None,
          "RestrictAddressFamilies": None, "SystemCallArchitectures": None, "SystemCallFilter": None,
          "MemoryDenyWriteExecute": None}
HARDENING = {"meshkit-supervisor.service": dict(STRICT, SystemCallFilter=["@system-service", "~@privileged @resources"]),
             "meshkit-watchdog.service": WATCHDOG, "meshkit-worker.service": WORKER,
             "meshkit-sync-memory.service": STRICT, "meshkit-sync-backup.service": STRICT}


def hardening_of(svc: dict, unit: str) -> dict:
    return {key: svc.get(key) for key in HARDENING[unit]}


def parse_unit(text: str) -> dict:
    """{section: {key: [values]}} (keys may repeat)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        section.setdefault(k.strip(), []).append(v.strip())
    return out


def seconds(v: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    for suffix in sorted(units, key=len, reverse=True):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * units[suffix]
    return float(v)


def verify(test, paths):
    """systemd-analyze verify: exit 0 and not a word on stderr."""
    p = subprocess.run([ANALYZE, "verify", *paths], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    test.assertEqual((p.returncode, p.stderr.strip()), (0, ""), f"verify {paths}:\n{p.stdout}{p.stderr}")


class UnitContents(unittest.TestCase):
    def units(self):
        return {os.path.basename(p): parse_unit(open(p).read()) for p in glob.glob(os.path.join(UNIT_DIR, "*"))
                if p.endswith((".service", ".timer"))}

    def test_role_units_say_what_they_must(self):
        units = self.units()
        for name, oom in MINE.items():
            with self.subTest(name):
                self.assertIn(name, units)
                svc, unit = units[name]["Service"], units[name]["Unit"]
                self.assertEqual(svc["Type"], ["notify"])
                self.assertEqual(svc["Restart"], ["always"])
                self.assertTrue(seconds(svc["WatchdogSec"][0]) > 0)
                self.assertEqual(svc["NoNewPrivileges"], ["yes"])
                self.assertEqual(svc["ProtectSystem"], ["strict"])
                self.assertEqual(svc["PrivateTmp"], ["yes"])
                self.assertEqual(svc["User"], ["meshkit"])
                self.assertTrue(svc["ReadWritePaths"][0])
                self.assertIn("/usr/bin/python3 -m meshkit", svc["ExecStart"][0])
                self.assertIn("StartLimitBurst", unit)
                if oom:
                    self.assertEqual(svc["OOMScoreAdjust"], [oom])

    def test_each_role_is_sandboxed_as_far_as_its_programs_allow(self):
        units = self.units()
        for name, wanted in HARDENING.items():
            with self.subTest(name):
                self.assertEqual(hardening_of(units[name]["Service"], name), wanted)

    def test_a_config_error_is_not_restarted(self):
        units = self.units()
        for name, wanted in NO_RESTART.items():
            with self.subTest(name):
                svc = units[name]["Service"]
                got = {code for value in svc.get("RestartPreventExitStatus", []) for code in value.split()}
                self.assertEqual(got, wanted)
                self.assertEqual(svc["Restart"], ["always"])      # everything else restarts (70, 75, ...)

    def test_restart_delay_can_never_trip_the_start_limit(self):
        """With restarts RestartSec apart, at most interval/RestartSec + 1 starts fit in the
        start-limit window; that must stay below the burst (or the limit is off)."""
        checked = 0
        for name, unit in self.units().items():
            svc = unit.get("Service", {})
            if svc.get("Restart", [""])[-1] != "always":
                continue
            with self.subTest(name):
                interval = seconds(unit["Unit"].get("StartLimitIntervalSec", ["10"])[-1])
                burst = int(unit["Unit"].get("StartLimitBurst", ["5"])[-1])
                delay = seconds(svc.get("RestartSec", ["0.1"])[-1])
                if interval > 0:
                    self.assertLess(interval / delay + 1, burst, f"{name}: {burst} starts in {interval} s, {delay} s apart")
                checked += 1
        self.assertGreaterEqual(checked, 3)


class RenderUnit(unittest.TestCase):
    TEMPLATE = ("# a comment about /opt/meshkit and /etc/meshkit/meshkit.toml stays\n[Service]\nUser=meshkit\n"
                "Group=meshkit\nWorkingDirectory=/opt/meshkit\nEnvironment=MESHKIT_HOME=/var/lib/meshkit\n"
                "ExecStart=/usr/bin/python3 -m meshkit supervisor --config /etc/meshkit/meshkit.toml\n"
                "ExecStartPre=-/usr/bin/env python3 -m meshkit locks list\n"
                "Environment=MESHKIT_CONFIG=/etc/meshkit/meshkit.toml\nReadWritePaths=/var/lib/meshkit /srv/extra\n")

    def test_fills_in_python_paths_user_and_writable_dirs(self):
        out = cmd_systemd.render_unit(self.TEMPLATE, "/opt/py 3/bin/python3", "/home/me/meshkit", "/home/me/m.toml",
                                      "/home/me/.meshkit", ["/home/me/data", "/tmp/50%"], "agent")
        lines = out.splitlines()
        self.assertEqual(lines[0], "# a comment about /opt/meshkit and /etc/meshkit/meshkit.toml stays")
        self.assertIn("User=agent", lines)
        self.assertIn("Group=agent", lines)
        self.assertIn("WorkingDirectory=/home/me/meshkit", lines)
        self.assertIn("Environment=MESHKIT_HOME=/home/me/.meshkit", lines)
        self.assertIn('ExecStart="/opt/py 3/bin/python3" -m meshkit supervisor --config /home/me/m.toml', lines)
        self.assertIn('ExecStartPre=-"/opt/py 3/bin/python3" -m meshkit locks list', lines)
        self.assertIn("ReadWritePaths=/home/me/data /tmp/50%% /srv/extra", lines)
        self.assertIn("Environment=MESHKIT_CONFIG=/home/me/m.toml", lines)
        with_state = cmd_systemd.render_unit(self.TEMPLATE + "StateDirectory=meshkit\n", "/p", "/r", None, "/h",
                                             ["/h/data"], "meshkit")
        self.assertIn("ReadWritePaths=/h/data /var/lib/meshkit /srv/extra\n", with_state)

    def test_without_a_config_file_the_flag_goes(self):
        out = cmd_systemd.render_unit(self.TEMPLATE, "/usr/bin/python3.11", "/r", None, "/h", ["/h/data"], "meshkit")
        self.assertIn("ExecStart=/usr/bin/python3.11 -m meshkit supervisor\n", out)
        self.assertNotIn("MESHKIT_CONFIG", out)


@unittest.skipUnless(ANALYZE, "systemd-analyze is not installed (no systemd on this machine)")
class Verify(unittest.TestCase):
    def test_every_unit_in_the_repository(self):
        units = sorted(p for p in glob.glob(os.path.join(UNIT_DIR, "*")) if p.endswith((".service", ".timer")))
        self.assertTrue(units)
        if not os.access("/usr/bin/python3", os.X_OK):
            self.skipTest("the units run /usr/bin/python3, which this machine lacks")
        verify(self, units)

    def test_printed_units(self):
        with tempfile.TemporaryDirectory() as d:
            config = os.path.join(d, "meshkit.toml")
            with open(config, "w") as f:
                f.write(render_default_toml())
            out = os.path.join(d, "units")
            printed = []
            for role in cmd_systemd.ROLES:
                if not cmd_systemd.templates(role):
                    continue      # the sync units come with the sync feature
                p = meshkit("systemd", role, "--config", config)
                self.assertEqual(p.returncode, 0, p.stderr)
                site = "-S " if role.startswith("sync") else ""      # the cron-like jobs skip site-packages
                self.assertIn(f"ExecStart={sys.executable} {site}-m meshkit {role.replace('-', ' ')}", p.stdout)
                self.assertTrue(f"--config {config}" in p.stdout or f"MESHKIT_CONFIG={config}" in p.stdout, p.stdout)
                self.assertNotIn("/etc/meshkit/meshkit.toml", "".join(
                    line for line in p.stdout.splitlines(True) if not line.startswith("#")))
                self.assertIn(f"WorkingDirectory={ROOT}", p.stdout)
                w = meshkit("systemd", role, "--config", config, "--write", out)
                self.assertEqual(w.returncode, 0, w.stderr)
                printed += w.stdout.split()
            self.assertIn(os.path.join(out, "meshkit-supervisor.service"), printed)
            self.assertIn(f"ReadWritePaths={os.path.join(d, 'data')}",
                          open(os.path.join(out, "meshkit-supervisor.service")).read())
            # the watchdog writes its state file (default: next to the config), nothing else
            self.assertIn(f"ReadWritePaths={d} ", open(os.path.join(out, "meshkit-watchdog.service")).read())
            for name, wanted in HARDENING.items():       # what gets installed keeps the sandbox
                with self.subTest(name):
                    unit = parse_unit(open(os.path.join(out, name)).read())
                    self.assertEqual(hardening_of(unit["Service"], name), wanted)
            verify(self, printed)


class Command(unittest.TestCase):
    def test_logging_dir_is_writable_for_the_roles_that_log_to_files(self):
        """Under ProtectSystem=strict a logging.dir left out of ReadWritePaths is silently dead."""
        with tempfile.TemporaryDirectory() as d:
            config = os.path.join(d, "meshkit.toml")
            with open(config, "w") as f:
                f.write('[logging]\ndir = "/var/log/meshkit"\n')
            for role, wanted in (("supervisor", True), ("worker", True), ("watchdog", False)):
                with self.subTest(role=role):
                    p = meshkit("systemd", role, "--config", config)
                    self.assertEqual(p.returncode, 0, p.stderr)
                    rw = next(line for line in p.stdout.splitlines() if line.startswith("ReadWritePaths="))
                    self.assertEqual("/var/log/meshkit" in rw.split("=", 1)[1].split(), wanted, rw)

    def test_sync_source_and_dest_fill_the_placeholder(self):
        with tempfile.TemporaryDirectory() as d:
            config = os.path.join(d, "meshkit.toml")
            open(config, "w").close()
            dest = os.path.join(d, "memory copy")
            p = meshkit("systemd", "sync-memory", "--config", config, "--source", "pi@pi.lan:/srv/agents",
                        "--dest", dest)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertNotIn("placeholder", p.stderr)      # (a warning may name d: under /tmp, see below)
            [run] = [line for line in p.stdout.splitlines() if line.startswith("ExecStart=")]
            self.assertIn(f'--source pi@pi.lan:/srv/agents --dest "{dest}" --quiet', run)
            [rw] = [line for line in p.stdout.splitlines() if line.startswith("ReadWritePaths=")]
            self.assertIn(f'"{dest}"', rw)
            self.assertNotIn("active.lan", p.stdout.split("[Service]", 1)[1].split("\n# ==>")[0])
            bare = meshkit("systemd", "sync-memory", "--config", config)
            self.assertEqual(bare.returncode, 0, bare.stderr)
            self.assertIn("placeholder (meshkit@active.lan:/srv/agents): pass --source SRC", bare.stderr)
            wrong = meshkit("systemd", "worker", "--config", config, "--source", "x")
            self.assertEqual(wrong.returncode, 2)
            self.assertIn("--source and --dest are for the sync roles", wrong.stderr)

    def test_the_roles_exit_2_on_a_bad_config(self):     # (the supervisor's address in use: 75, test_cli_errors)
        """What RestartPreventExitStatus=2 relies on: a config error, whether the file's or the
        role's own check, exits 2 with one line naming the file and key."""
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.toml")
            with open(bad, "w") as f:
                f.write('[worker]\nslots = "many"\n')
            empty = os.path.join(d, "empty.toml")       # no [worker.kinds.NAME]
            open(empty, "w").close()
            init = meshkit("init", "--dir", os.path.join(d, "ok"))
            self.assertEqual(init.returncode, 0, init.stderr)
            ok = os.path.join(d, "ok", "meshkit.toml")      # keys, but no watchdog URLs
            listen = os.path.join(d, "listen.toml")
            with open(listen, "w") as f:
                f.write('[supervisor]\nlisten = "8765"\n')
            for role, own in (("worker", (empty, "worker.kinds")), ("watchdog", (ok, "watchdog.primary")),
                              ("supervisor", (listen, "supervisor.listen"))):
                for config, key in ((bad, "worker.slots"), own):
                    with self.subTest(role=role, key=key):
                        p = meshkit(role, "--config", config, timeout=30)
                        self.assertEqual(p.returncode, 2, p.stderr)
                        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
                        self.assertIn(f"{config}: {key}: expected", p.stderr)

    def test_paths_under_tmp_are_named_on_stderr(self):
        """PrivateTmp=yes gives the service its own empty /tmp and /var/tmp: a config, directory
        or file the unit needs there is hidden from it. The unit is still printed, exit 0."""
        with tempfile.TemporaryDirectory(dir="/tmp") as d, tempfile.TemporaryDirectory(dir="/var/tmp") as v:
            config = os.path.join(d, "meshkit.toml")
            with open(config, "w") as f:
                f.write(f'[logging]\ndir = "{v}/log"\n[worker]\nwork_dir = "/srv/work"\n')
            cases = {
                ("supervisor",): {"config file": config, "supervisor.data_dir": f"{d}/data",
                                  "logging.dir": f"{v}/log", "auth.keys_file": f"{d}/keys"},
                ("worker",): {"config file": config, "locks.dir": f"{d}/locks", "logging.dir": f"{v}/log",
                              "auth.keys_file": f"{d}/keys"},
                ("sync-memory", "--source", f"{v}/agents", "--dest", f"{v}/memory"):
                    {"config file": config, "sync.status_dir": f"{d}/sync", "locks.dir": f"{d}/locks",
                     "--source": f"{v}/agents", "--dest": f"{v}/memory"},
            }
            for argv, hidden in cases.items():
                with self.subTest(role=argv[0]):
                    p = meshkit("systemd", *argv, "--config", config)
                    self.assertEqual(p.returncode, 0, p.stderr)
                    self.assertIn("\nExecStart=", p.stdout)
                    self.assertIn("PrivateTmp=yes", p.stderr)
                    named = dict(line.strip().split(": ", 1) for line in p.stderr.splitlines() if line.startswith("  "))
                    if cmd_systemd.under_private_tmp(ROOT):            # a CI clone under /tmp
                        hidden = dict(hidden, **{"the checkout (WorkingDirectory)": ROOT})
                    self.assertEqual(named, hidden, p.stderr)          # /srv/work (worker) is not named
                    w = meshkit("systemd", *argv, "--config", config, "--write", d)
                    self.assertEqual((w.returncode, w.stderr), (0, p.stderr))

    def test_no_warning_when_nothing_is_under_tmp(self):
        cfg = parse_config('[logging]\ndir = "/var/log/meshkit"\n', "/etc/meshkit/meshkit.toml")
        for role in cmd_systemd.ROLES:
            given = {"--source": "pi@pi.lan:/tmp/agents", "--dest": "/srv/memory"} if role.startswith("sync") else {}
            self.assertEqual(cmd_systemd.hidden_paths(role, cfg, cfg.source, given, root="/opt/meshkit",
                                                      python="/usr/bin/python3"), [], role)
        p = meshkit("systemd", "supervisor", home="/nonexistent-meshkit-home")   # default config, not made
        if cmd_systemd.under_private_tmp(ROOT):     # a CI clone under /tmp: only the checkout is named
            self.assertEqual((p.returncode, p.stderr.count("\n  ")), (0, 1), p.stderr)
            self.assertIn(f"the checkout (WorkingDirectory): {ROOT}", p.stderr)
        else:
            self.assertEqual((p.returncode, p.stderr), (0, ""))
        for path, hidden in (("/tmp", True), ("/var/tmp/x", True), ("/tmpfs/x", False), ("/var/tmpx", False)):
            self.assertEqual(cmd_systemd.under_private_tmp(path), hidden, path)
        # a checkout under /tmp is named; a remote --source is not a path under it
        self.assertEqual(cmd_systemd.hidden_paths("sync-memory", cfg, cfg.source, {"--source": "pi@pi.lan:/srv/agents"},
                                                  root="/tmp/mk", python="/usr/bin/python3"),
                         [("the checkout (WorkingDirectory)", "/tmp/mk")])
        self.assertIsNone(cmd_systemd.PRIVATE_TMP_RE.search("[Service]\nPrivateTmp=no\n"))

    def test_a_role_without_templates_is_a_clear_error(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(cmd_systemd.templates("worker", d), [])
        p = meshkit("systemd", "nosuchrole")
        self.assertEqual(p.returncode, 2)
        self.assertIn("invalid choice", p.stderr)


if __name__ == "__main__":
    unittest.main()
