"""What the sync integration tests share: a temp tree of agents, real
`python -m meshkit sync ...` processes, and checks on DEST. (No tests here.)"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSYNC = shutil.which("rsync")
STATUS_KEYS = {"job", "last_success", "last_failure", "consecutive_failures",
               "last_result", "last_error", "last_run"}


def tree(root: str) -> dict:
    """{relative path: bytes} of every regular file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def write(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


@unittest.skipUnless(RSYNC, "rsync is not installed (apt-get install rsync)")
class SyncCase(unittest.TestCase):
    """A temp dir with agents/ (the source), copy/ (DEST) and home/ (MESHKIT_HOME)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="meshkit-sync-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.src = os.path.join(self.tmp, "agents")
        self.dest = os.path.join(self.tmp, "copy")
        self.home = os.path.join(self.tmp, "home")
        os.makedirs(self.home)
        self.config = None

    # --- the source ---

    def make_agents(self, agents: int = 3, notes: int = 3) -> dict:
        """agentN/{MEMORY.md, memory/noteK.json, memory/log.jsonl, scratch.txt}; returns
        the files sync memory copies (scratch.txt is outside memory/ and is not copied)."""
        for a in range(agents):
            base = os.path.join(self.src, f"agent{a}")
            write(os.path.join(base, "MEMORY.md"), f"# agent {a}\n")
            for k in range(notes):
                write(os.path.join(base, "memory", f"note{k}.json"), json.dumps({"agent": a, "note": k}))
            write(os.path.join(base, "memory", "log.jsonl"), '{"t": 1}\n{"t": 2}\n')
            write(os.path.join(base, "scratch.txt"), "not memory")
        return self.expected()

    def expected(self) -> dict:
        return {p: d for p, d in tree(self.src).items() if not p.endswith("scratch.txt")}

    def set_config(self, text: str) -> None:
        self.config = os.path.join(self.home, "meshkit.toml")
        write(self.config, text)

    # --- running meshkit ---

    def meshkit(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, MESHKIT_HOME=self.home, PYTHONPATH=ROOT)
        env.pop("MESHKIT_CONFIG", None)
        return subprocess.run([sys.executable, "-m", "meshkit", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def sync(self, *extra, kind: str = "memory", code: int | None = 0) -> subprocess.CompletedProcess:
        proc = self.meshkit("sync", kind, "--source", self.src, "--dest", self.dest, *extra)
        if code is not None:
            self.assertEqual(proc.returncode, code, f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    @staticmethod
    def run_line(proc) -> dict:
        """The one sync_run JSON log line a run wrote on stderr."""
        lines = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
        runs = [ln for ln in lines if ln.get("event") == "sync_run"]
        assert len(runs) == 1, proc.stderr
        return runs[0]

    # --- looking at DEST ---

    def current(self) -> str | None:
        try:
            return os.path.basename(os.readlink(os.path.join(self.dest, "current")))
        except FileNotFoundError:
            return None

    def snapshots(self, suffix: str = "") -> list:
        d = os.path.join(self.dest, "snapshots")
        if not os.path.isdir(d):
            return []
        return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))
                      and (n.endswith(suffix) if suffix else "." not in n))

    def invalid(self) -> list:
        d = os.path.join(self.dest, "invalid")
        return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n))) if os.path.isdir(d) else []

    def status(self, job: str = "memory") -> dict:
        with open(os.path.join(self.home, "sync", f"{job}.json")) as f:
            return json.load(f)

    def assert_current(self, expected: dict, name: str | None = None) -> None:
        """current points to a complete snapshot (with a record) holding exactly expected,
        and every JSON file in it parses."""
        cur = self.current()
        self.assertIsNotNone(cur, "no current snapshot")
        if name is not None:
            self.assertEqual(cur, name)
        self.assertIn(cur, self.snapshots())
        self.assertTrue(os.path.isfile(os.path.join(self.dest, "snapshots", cur + ".json")))
        got = tree(os.path.join(self.dest, "current"))
        self.assertEqual(sorted(got), sorted(expected))
        self.assertEqual(got, expected)
        for path, data in got.items():
            if path.endswith(".json"):
                json.loads(data)
