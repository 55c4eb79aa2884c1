"""`meshkit sync ...` (not built yet)."""


def register(sub) -> None:
    pass
