"""`meshkit locks ...` (not built yet)."""


def register(sub) -> None:
    pass
