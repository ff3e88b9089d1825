"""GrassError: a libgrass status and its message, raised at trace time by the workspace and
shape queries, and recoverable from the runtime error XLA raises when a handler fails."""

import re

# grass_status (tests/enum_codes.rs checks it against grass.h).
STATUS_NAMES = {
    0: "GRASS_OK",
    1: "GRASS_ERROR_NULL_POINTER",
    2: "GRASS_ERROR_INVALID_VALUE",
    3: "GRASS_ERROR_INVALID_ENUM",
    4: "GRASS_ERROR_DTYPE",
    5: "GRASS_ERROR_STRUCT_SIZE",
    6: "GRASS_ERROR_WORKSPACE_TOO_SMALL",
    7: "GRASS_ERROR_INVALID_STATE",
    8: "GRASS_ERROR_BAD_CHECKPOINT",
    9: "GRASS_ERROR_WRONG_CONTEXT",
    10: "GRASS_ERROR_MISALIGNED",
    100: "GRASS_ERROR_CUDA_UNAVAILABLE",
    101: "GRASS_ERROR_CUDA",
    102: "GRASS_ERROR_UNSUPPORTED",
    103: "GRASS_ERROR_OUT_OF_MEMORY",
    200: "GRASS_ERROR_PANIC",
    201: "GRASS_ERROR_INTERNAL",
}

# What a failing handler writes in front of grass_last_error_message().
_TAG = re.compile(r"\[grass status (\d+) (\w+)\] ?(.*)", re.S)


class GrassError(Exception):
    """A libgrass call failed: `status` (int), `name` (e.g. GRASS_ERROR_INVALID_VALUE) and
    `message` (grass_last_error_message(), naming the function and the argument)."""

    def __init__(self, status, message):
        self.status = int(status)
        self.name = STATUS_NAMES.get(self.status, "GRASS_ERROR_UNKNOWN")
        self.message = message
        super().__init__(f"{self.name} ({self.status}): {message}")

    @classmethod
    def from_status(cls, lib, status, fn):
        msg = lib.grass_last_error_message().decode(errors="replace")
        return cls(status, msg or f"{fn}: {lib.grass_status_string(status).decode()}")

    @classmethod
    def from_runtime_error(cls, exc):
        """The GrassError inside an XLA runtime error raised by a grass handler, or None."""
        m = _TAG.search(str(exc))
        if m is None:
            return None
        return cls(int(m.group(1)), m.group(3).strip())
