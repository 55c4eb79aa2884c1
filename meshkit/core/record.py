"""Plain value classes, written out instead of @dataclass.

`meshkit sync` runs from cron and is over in a fraction of a second, so its
start-up counts: importing `dataclasses` costs about 4.5 ms (it pulls in inspect,
ast, dis and tokenize) and every @dataclass a few hundred microseconds more to
generate its methods. The classes on the sync path (and the config schema every
command loads) list their fields in __slots__, write their own __init__, and get
equality, a repr and as_dict() from Record; Frozen ones also refuse assignment
and are hashable, like @dataclass(frozen=True).
"""


class Record:
    """Equality (same class, equal fields), repr and as_dict() over __slots__."""

    __slots__ = ()

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None     # mutable: not hashable (as a plain @dataclass)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def as_dict(self) -> dict:
        """{field: value} in field order (dataclasses.asdict without the deep copy)."""
        return {f: getattr(self, f) for f in self.__slots__}


class Frozen(Record):
    """A Record whose fields are set once, in __init__, with
    object.__setattr__(self, name, value) (as @dataclass(frozen=True) does)."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self.__slots__))

    def __reduce__(self):
        """copy and pickle rebuild it through __init__ (which takes the fields in
        __slots__ order), as assignment is refused."""
        return type(self), tuple(getattr(self, f) for f in self.__slots__)
