"""`meshkit systemd ROLE`: print (or write) a systemd unit with this machine's paths filled in.

The templates are the files in the checkout's systemd/ directory. They are written for a
checkout in /opt/meshkit, the config /etc/meshkit/meshkit.toml, /usr/bin/python3 and
writable directories under /var/lib/meshkit; render_unit() replaces those (outside
comments) with this machine's python, checkout, config and the role's writable directories.
"""

import argparse
import glob
import os
import re
import sys

import meshkit
from meshkit.adapters.atomic import write_text
from meshkit.cli.common import EXIT_USAGE, add_config_arg, config_path, fail, load_config, meshkit_home
from meshkit.rules.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(meshkit.__file__)))
UNIT_DIR = os.path.join(ROOT, "systemd")
ROLES = ("supervisor", "worker", "watchdog", "sync-memory", "sync-backup")

# What the templates say, and what replaces it.
T_ROOT = "/opt/meshkit"
T_CONFIG = "/etc/meshkit/meshkit.toml"
T_STATE = "/var/lib/meshkit"
T_USER = "meshkit"
PYTHON_RE = re.compile(r"^(Exec\w+=[-@:+!]*)(?:/usr/bin/env\s+)?(?:/usr(?:/local)?/bin/)?python3?(?=\s|$)")

# Config keys naming the directories each role writes (ReadWritePaths).
WRITABLE = {
    "supervisor": ("supervisor.data_dir", "logging.dir"),
    "worker": ("worker.work_dir", "locks.dir", "logging.dir"),
    "watchdog": ("watchdog.state_file",),     # a file: its directory (written atomically)
    "sync-memory": ("sync.status_dir", "locks.dir"),
    "sync-backup": ("sync.status_dir", "locks.dir"),
}

# Config keys naming files each role reads (not in ReadWritePaths, but the service must see them).
READS = {
    "supervisor": ("auth.keys_file", "auth.viewer_token_file", "supervisor.priorities_file"),
    "worker": ("auth.keys_file",),
    "watchdog": ("auth.keys_file",),
    "sync-memory": ("sync.ssh_key",),
    "sync-backup": ("sync.ssh_key",),
}
# PrivateTmp=yes gives the service its own empty /tmp and /var/tmp.
PRIVATE_TMP = ("/tmp", "/var/tmp")
PRIVATE_TMP_RE = re.compile(r"^\s*PrivateTmp\s*=\s*(?:yes|true|on|1)\s*$", re.I | re.M)
REMOTE_RE = re.compile(r"^[^/]*:")      # rsync's HOST:PATH, USER@HOST:PATH, HOST::MODULE, rsync://

EXAMPLE = """examples:
  python3 -m meshkit systemd supervisor --config /etc/meshkit/meshkit.toml \\
      | sudo tee /etc/systemd/system/meshkit-supervisor.service
  sudo python3 -m meshkit systemd sync-memory --config /etc/meshkit/meshkit.toml --write /etc/systemd/system
  sudo systemctl daemon-reload && sudo systemctl enable --now meshkit-supervisor

The unit runs as --user (default meshkit; create it with `useradd --system meshkit`) and
may write only the role's directories from the config (ReadWritePaths); create them
owned by that user before the first start. The units have PrivateTmp=yes: a config,
directory or file they need under /tmp or /var/tmp is hidden from them, and each such
path is named in a warning on stderr (the unit is printed all the same)."""


def register(sub) -> None:
    p = sub.add_parser("systemd", help="print a systemd unit for a role, with this machine's paths",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print the systemd unit(s) of ROLE from the checkout's systemd/ directory "
                                   "with this machine's python, checkout, config and writable directories "
                                   "filled in. Roles with a timer print two files, each after a "
                                   "'# ==> NAME <==' line; --write DIR writes them as separate files.",
                       epilog=EXAMPLE)
    p.add_argument("role", choices=ROLES, metavar="ROLE", help=" | ".join(ROLES))
    add_config_arg(p)
    p.add_argument("--user", default=T_USER, help="user (and group) the service runs as (default: meshkit)")
    p.add_argument("--write", metavar="DIR", help="write the unit file(s) into DIR instead of printing them")
    p.add_argument("--source", metavar="SRC", help="sync roles: the --source of the sync command (sync-memory's "
                                                   "template has a placeholder, HOST:/srv/agents)")
    p.add_argument("--dest", metavar="DEST", help="sync roles: the --dest of the sync command (made writable too)")
    p.set_defaults(func=run)


def quote(path: str) -> str:
    """A path as one word of a unit file: % doubled, quoted when it has spaces or quotes."""
    path = path.replace("%", "%%")
    if re.search(r"[\s\"'\\]", path):
        return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return path


def templates(role: str, unit_dir: str = UNIT_DIR) -> list:
    """The template files of a role: meshkit-ROLE.service first, then its .timer etc."""
    found = glob.glob(os.path.join(glob.escape(unit_dir), f"meshkit-{role}.*"))
    return sorted(found, key=lambda p: (not p.endswith(".service"), p))


def render_unit(text: str, python: str, root: str, config: str | None, home: str,
                writable: list, user: str, args: dict | None = None) -> str:
    """The template with the machine's values, comments left as they are. Pure.

    Exec lines get `python` and `config` (`--config` dropped when there is no config file);
    Environment=MESHKIT_CONFIG= gets `config` (the line goes without one); ReadWritePaths
    gets the role's `writable` directories (/var/lib/meshkit stays when StateDirectory=meshkit
    creates it); User/Group get `user`; /opt/meshkit becomes `root`; `args` ({"--source": SRC, ...})
    replace those options' values on Exec lines."""
    keep_state = "\nStateDirectory=meshkit" in "\n" + text
    out = []
    for line in text.splitlines():
        if line.lstrip().startswith(("#", ";")) or "=" not in line:
            out.append(line)
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key.startswith("Exec"):
            line = PYTHON_RE.sub(lambda m: m.group(1) + quote(python), line)
            if not config:
                line = re.sub(r"\s+--config\s+" + re.escape(T_CONFIG), "", line)
            for option, given in (args or {}).items():
                line = re.sub(r"(\s" + re.escape(option) + r"\s+)\S+", lambda m: m.group(1) + quote(given), line)
        elif key in ("User", "Group") and value == T_USER:
            line = f"{key}={user}"
        elif key == "ReadWritePaths":
            words = value.split()
            mine = [quote(p) for p in writable] if T_STATE in words else []
            rest = [w for w in words if w != T_STATE or keep_state]
            line = "ReadWritePaths=" + " ".join(dict.fromkeys(mine + rest))
        elif key == "Environment" and value == f"MESHKIT_HOME={T_STATE}":
            line = "Environment=" + quote(f"MESHKIT_HOME={home}")
        elif key == "Environment" and value == f"MESHKIT_CONFIG={T_CONFIG}":
            if not config:
                continue
            line = "Environment=" + quote(f"MESHKIT_CONFIG={config}")
        if config:
            line = line.replace(T_CONFIG, quote(config))
        out.append(line.replace(T_ROOT, root))
    return "\n".join(out) + "\n"


def writable_dirs(role: str, cfg: Config) -> list:
    dirs = [os.path.dirname(cfg.path(key)) if key.endswith("_file") and cfg.path(key) else cfg.path(key)
            for key in WRITABLE[role]]
    return list(dict.fromkeys(d for d in dirs if d))


def under_private_tmp(path: str) -> bool:
    """The path (as written, or with its links resolved) is /tmp, /var/tmp or below them."""
    return any(p == t or p.startswith(t + "/") for p in {os.path.abspath(path), os.path.realpath(path)}
               for t in PRIVATE_TMP)


def hidden_paths(role: str, cfg: Config, cfg_file: str | None, given: dict, root: str = ROOT,
                 python: str = sys.executable) -> list:
    """[(what, path)] the unit needs that PrivateTmp=yes hides: under /tmp or /var/tmp."""
    named = [("config file", cfg_file)]
    for key in WRITABLE[role] + READS[role]:
        if key != "auth.viewer_token_file" or cfg.is_set(key) or os.path.exists(cfg.path(key)):
            named.append((key, cfg.path(key)))
    source = given.get("--source")
    if source and not REMOTE_RE.match(source):
        named.append(("--source", os.path.join(root, source)))     # relative: to WorkingDirectory
    named += [("--dest", given.get("--dest")), ("the checkout (WorkingDirectory)", root), ("python", python)]
    return list(dict.fromkeys((what, path) for what, path in named if path and under_private_tmp(path)))


def warn_private_tmp(hidden: list) -> None:
    lines = ["meshkit: warning: the unit has PrivateTmp=yes: the service gets its own empty /tmp and "
             "/var/tmp and will not see:"]
    lines += [f"  {what}: {path}" for what, path in hidden]
    lines.append("meshkit: move them out of /tmp and /var/tmp (e.g. under /var/lib/meshkit), "
                 "or take PrivateTmp=yes out of the unit")
    sys.stderr.write("\n".join(lines) + "\n")


def run(args) -> int:
    cfg = load_config(args)
    files = templates(args.role)
    if not files:
        return fail(f"no unit template {os.path.join(UNIT_DIR, f'meshkit-{args.role}.*')} "
                    f"(this command needs a checkout with its systemd/ directory)", EXIT_USAGE)
    cfg_file = config_path(args) if cfg.source else None
    given = {opt: os.path.abspath(v) if opt == "--dest" else v
             for opt, v in (("--source", args.source), ("--dest", args.dest)) if v}
    if given and not args.role.startswith("sync"):
        return fail("--source and --dest are for the sync roles (sync-memory, sync-backup)", EXIT_USAGE)
    if args.role == "sync-memory" and not args.source:
        sys.stderr.write("meshkit: the unit's --source is the template's placeholder (meshkit@active.lan:/srv/agents): "
                         "pass --source SRC, or edit it later with `systemctl edit --full meshkit-sync-memory`\n")
    writable = writable_dirs(args.role, cfg) + ([given["--dest"]] if "--dest" in given else [])
    rendered = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        name = os.path.basename(path)
        head = (f"# {name}: made by `python3 -m meshkit systemd {args.role}` from {path}, with this machine's\n"
                f"# paths filled in below the comments (the comments describe the template as written)\n")
        rendered.append((name, head + render_unit(text, sys.executable, ROOT, cfg_file, meshkit_home(),
                                                  writable, args.user, given)))
    hidden = hidden_paths(args.role, cfg, cfg_file, given)
    if hidden and any(PRIVATE_TMP_RE.search(text) for _, text in rendered):
        warn_private_tmp(hidden)
    if args.write:
        for name, text in rendered:
            target = os.path.join(args.write, name)
            write_text(target, text)
            print(target)
        return 0
    for i, (name, text) in enumerate(rendered):
        if len(rendered) > 1:
            sys.stdout.write(("\n" if i else "") + f"# ==> {name} <==\n")
        sys.stdout.write(text)
    return 0
