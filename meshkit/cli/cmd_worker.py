"""`meshkit worker ...` (not built yet)."""


def register(sub) -> None:
    pass
