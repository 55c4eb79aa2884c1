"""Every error meshkit reports on purpose. Each has a stable code and an HTTP status."""


class MeshkitError(Exception):
    code = "error"
    status = 500

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        err = {"code": self.code, "message": self.message}
        err.update({k: v for k, v in self.details.items() if v is not None})
        return {"error": err}


class BadRequest(MeshkitError):
    code = "bad_request"
    status = 400


class TooLarge(MeshkitError):
    code = "too_large"
    status = 413


class Unauthorized(MeshkitError):
    code = "unauthorized"
    status = 401


class Forbidden(MeshkitError):
    code = "forbidden"
    status = 403


class NotFound(MeshkitError):
    code = "not_found"
    status = 404


class MethodNotAllowed(MeshkitError):
    code = "method_not_allowed"
    status = 405


class Conflict(MeshkitError):
    code = "conflict"
    status = 409


class InvalidTransition(Conflict):
    code = "invalid_transition"


class StaleFence(Conflict):
    code = "stale_fence"


class UnknownNode(Conflict):
    code = "unknown_node"


class NotActive(Conflict):
    code = "not_active"


class EpochMismatch(Conflict):
    """An HA control request (promote, demote, replicate) naming an epoch that does not fit
    this supervisor's: meant for the other one, or for an earlier state (a replay)."""
    code = "epoch_mismatch"


class Unavailable(MeshkitError):
    code = "unavailable"
    status = 503


class StoreError(MeshkitError):
    """The database could not be written (disk full, locked too long)."""
    code = "store_error"
    status = 503


class InternalError(MeshkitError):
    """A bug: answered 500 with no internals (the log has the traceback)."""
    code = "internal"
    status = 500


class ConfigError(MeshkitError):
    code = "config_error"
    status = 500

    def __init__(self, file, key, expected, found):
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: expected {expected}, found {found}",
                         file=str(file) if file else None, key=key)


class ClientError(MeshkitError):
    """A client-side failure talking to a supervisor (network, refused, bad answer)."""
    code = "client_error"
    status = 0


class LockHeld(MeshkitError):
    code = "lock_held"
    status = 409


class SyncError(MeshkitError):
    code = "sync_error"
    status = 0


class ApiError(MeshkitError):
    """An error answer from a supervisor, carrying its status and code."""

    def __init__(self, status: int, code: str, message: str, **details):
        super().__init__(message, **details)
        self.status = status
        self.code = code
