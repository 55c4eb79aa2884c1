"""Reading an HTTP/1.x request head: the request line and the header fields.

http.server hands the header block to the email package (a feed parser built for mail
messages): measured, about a fifth of the supervisor's Python time per request. Request
headers need much less: lines up to a CRLF, split at the first colon.
This reads them into `Headers` with http.server's limits (a line of at most 64 KiB, at
most 100 fields) and refuses what RFC 9112 says a server must refuse: whitespace before
the colon and obsolete line folding (400), as well as a name that is not a token, a NUL
in a value, and a CR anywhere but just before the LF that ends a line (RFC 9110 section
5.5: a recipient of a CR, LF or NUL in a field value must refuse the message or replace
it with a space; RFC 9112 section 2.2 says the same of a bare CR. A line ending in
CR CR LF is refused, by both readers alike).
"""

import re

MAX_LINE = 65536
MAX_FIELDS = 100
BARE_CR = "a header line holds a bare CR (a CR is allowed only just before the LF that ends a line)"
NUL = "a header line holds a NUL character"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # a field name (RFC 9110 token)
# One header line as read_headers reads it (NAME:VALUE, the value stripped of spaces and
# tabs), when it holds no CR but the one before its LF: parse_fields' fast path.
_FIELD_LINE = re.compile(r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\r\n\0]*[^\r\n\0 \t])?)[ \t]*\r?\n", re.M)


class HeadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Headers:
    """Header fields in the order sent; names match case-insensitively; the first of
    repeated fields is what get() answers (as email.message.Message does)."""

    __slots__ = ("_fields", "_first", "_ascii")

    def __init__(self, fields: list, ascii: bool = None):
        self._fields = fields
        self._first = {name.lower(): value for name, value in reversed(fields)}     # the first one wins
        self._ascii = ascii             # all names and values ASCII, when the reader knows it

    def isascii(self) -> bool:
        if self._ascii is None:
            self._ascii = all(k.isascii() and v.isascii() for k, v in self._fields)
        return self._ascii

    def get(self, name: str, default=None):
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str):
        return self._first.get(name.lower())

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first

    def get_all(self, name: str, default=None):
        name = name.lower()
        if len(self._first) == len(self._fields):         # no name repeated: at most one
            return [self._first[name]] if name in self._first else default
        found = [v for k, v in self._fields if k.lower() == name]
        return found or default

    def items(self) -> list:
        return list(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def read_headers(readline) -> Headers:
    """Header fields up to the empty line; `readline(limit)` reads one line (bytes)."""
    fields = []
    while True:
        line = readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeadError(431, "a header line is longer than 65536 bytes")
        if line in (b"\r\n", b"\n", b""):
            return Headers(fields)
        text = line.decode("iso-8859-1")
        text = text[:-1] if text.endswith("\n") else text
        fields.append(_field(text[:-1] if text.endswith("\r") else text, len(fields)))


def parse_fields(block: bytes) -> Headers:
    """The header fields of a whole header block (the lines after the request line, up to
    and including the empty line), with read_headers' rules, parsed in one pass."""
    text = block.decode("iso-8859-1")
    if len(text) <= MAX_LINE and text.endswith(("\n\n", "\n\r\n")):
        # Each match is one whole line; when all lines but the last (empty) one match, the
        # block is plain fields (the common case), read by one findall.
        fields = _FIELD_LINE.findall(text)
        if len(fields) == text.count("\n") - 1 and len(fields) <= MAX_FIELDS:
            return Headers(fields, text.isascii())      # (the rest of the block is ASCII: ":", " ", CR LF)
    return _parse_lines(text)       # the rest, and every refusal


def _parse_lines(text: str) -> Headers:
    lines = text.split("\n")
    fields = []
    for line in lines:
        if len(line) > MAX_LINE:
            raise HeadError(431, "a header line is longer than 65536 bytes")
        line = line[:-1] if line.endswith("\r") else line
        if not line:
            break
        fields.append(_field(line, len(fields)))
    return Headers(fields)


def _field(line: str, before: int) -> tuple:
    """(name, value) of one header line without its line end, by RFC 9112's rules;
    `before`: how many fields came before it."""
    if before == MAX_FIELDS:
        raise HeadError(431, f"more than {MAX_FIELDS} header fields")
    if "\r" in line:
        raise HeadError(400, BARE_CR)
    if "\0" in line:
        raise HeadError(400, NUL)
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):
        raise HeadError(400, "malformed header line (a field is NAME: VALUE, with no space before the "
                             "colon and no folded continuation lines)")
    return name, value.strip(" \t")


def parse_version(text: str):
    """(major, minor) of "HTTP/x.y" (RFC 2145: two whole numbers), or None."""
    if text == "HTTP/1.1":
        return 1, 1
    if not text.startswith("HTTP/"):
        return None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])
