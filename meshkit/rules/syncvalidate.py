"""Validation of a synced copy, one file at a time: bytes in, problems out.

  *.json   parses as JSON
  *.jsonl  every non-blank line parses as JSON
  *.md     is UTF-8 and not empty
  [sync.memory.require] "GLOB" = ["key", ...]   a matching file is a JSON object
           (each line, for .jsonl) that has those keys; GLOB is an fnmatch
           pattern on the path relative to the copy ('*' also matches '/')
  any file that had content in the current copy did not shrink to zero bytes
  a symlink stays inside the copy (link_problem): not absolute or empty, no '..'
           climbing above the copy's top, none after a name (rsync --safe-links' rule)

The caller reads only the files for which needs_content() is true.
"""

import fnmatch
import json

CHECKED_SUFFIXES = (".json", ".jsonl", ".md")


def _suffix(path: str) -> str:
    """The file name's last suffix, lower case ("" if the name has no dot, or
    only a leading one: ".json" is a hidden file, not a JSON file)."""
    dot = path.rfind(".")
    if dot <= path.rfind("/") + 1:
        return ""
    return path[dot:].lower()


def required_keys(path: str, require: dict) -> list[tuple[str, list]]:
    """[(glob, keys)] of every require entry whose glob matches path."""
    if not require:     # the usual case, 10,000 times on a first sync
        return []
    return [(glob, keys) for glob, keys in require.items() if fnmatch.fnmatchcase(path, glob)]


def needs_content(path: str, require: dict) -> bool:
    return _suffix(path) in CHECKED_SUFFIXES or bool(require and required_keys(path, require))


def _loads(data: bytes):
    """json.loads(data), minus its encoding detection when the text cannot be
    UTF-16/32 or start with a BOM (first byte not NUL/0xEF/0xFE/0xFF, second not
    NUL): then json.loads decodes it as UTF-8 ("surrogatepass") too."""
    if data[:1] not in _SNIFF and data[1:2] != b"\0":
        return _decode(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


_SNIFF = (b"", b"\0", b"\xef", b"\xfe", b"\xff")     # first bytes json.loads looks at twice
_decode = json.JSONDecoder().decode                 # what json.loads(str) calls without options


def _json_error(e: Exception) -> str:
    if isinstance(e, RecursionError):      # json recurses per level: a deep enough file exhausts the stack
        return "nested too deeply"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno}"   # msg may end in "at"
    return str(e)


def _missing(obj, keys) -> list:
    if not isinstance(obj, dict):
        return list(keys)
    return [k for k in keys if k not in obj]


def _check_keys(records: list, rules: list, jsonl: bool) -> list[str]:
    problems = []
    for glob, keys in rules:
        for n, obj in records:
            missing = _missing(obj, keys)
            if not missing:
                continue
            where = f"line {n} " if jsonl else ""
            what = "is not a JSON object" if not isinstance(obj, dict) else \
                "lacks required key" + ("s " if len(missing) > 1 else " ") + ", ".join(map(json.dumps, missing))
            problems.append(f"{where}{what} (required by [sync.memory.require] {json.dumps(glob)})")
            break
    return problems


def _parse_jsonl(data: bytes) -> tuple[list, list[str]]:
    records, problems = [], []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((n, _loads(line)))
        except (ValueError, RecursionError) as e:
            problems.append(f"line {n} is not valid JSON: {_json_error(e)}")
            break
    return records, problems


def check_file(path: str, data: bytes | None, size: int, old_size: int | None, require: dict) -> list[str]:
    """Problems with one file of a new copy ([] if none).

    data: the file's bytes (None if needs_content() said they are not needed);
    size: its size; old_size: its size in the current copy (None if it is new)."""
    problems = []
    if size == 0 and old_size:
        problems.append(f"shrank to zero bytes (was {old_size} bytes)")
    if data is None:
        return problems
    suffix, rules = _suffix(path), required_keys(path, require)
    if suffix == ".md":
        if not data.strip():
            problems.append("is empty (a .md file must have content)")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"is not UTF-8 (bad byte at offset {e.start})")
        if rules:
            problems.append("has required keys configured but is not JSON")
        return problems
    if suffix == ".jsonl":
        records, bad = _parse_jsonl(data)
        return problems + (bad or _check_keys(records, rules, jsonl=True))
    if suffix == ".json" or rules:
        try:
            obj = _loads(data)
        except (ValueError, RecursionError) as e:
            what = "is not valid JSON" if suffix == ".json" else "has required keys configured but is not valid JSON"
            return problems + [f"{what}: {_json_error(e)}"]
        if rules:                        # the usual .json (10,000 on a first sync) has none: parsed only
            problems += _check_keys([(1, obj)], rules, jsonl=False)
    return problems


def link_problem(path: str, target: str) -> str | None:
    """Why the symlink at path (relative to the copy) pointing to target may lead out
    of the copy, or None. Lexical, like rsync --safe-links: absolute or empty is out;
    leading '..' may climb only as high as the link's own directory; a '..' after a
    name is out too (a name may itself be a link, so the climb can't be counted)."""
    if not target or target.startswith("/"):
        return f"is a symlink to {target!r}, outside the copy (an absolute or empty target)"
    depth = path.count("/")
    named = False
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            named = True
        elif named:
            return f"is a symlink to {target!r}, with '..' after a name (it may lead out of the copy)"
        elif depth == 0:
            return f"is a symlink to {target!r}, which climbs out of the copy with '..'"
        else:
            depth -= 1
    return None
