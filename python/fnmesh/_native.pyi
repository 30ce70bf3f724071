# Hand-written stub of the compiled module fnmesh._native (rust/fnmesh-py). Checked against the
# real module by `python -m mypy.stubtest fnmesh._native` in the test suite.
from typing import Any, final

__version__: str

# --- protocol ---
DEFAULT_MAX_FRAME_BYTES: int

@final
class Frame:
    """One decoded iii protocol message."""

    @staticmethod
    def decode(data: bytes | str, max_size: int | None = None) -> Frame: ...
    @staticmethod
    def from_dict(message: dict[str, Any]) -> Frame: ...
    @property
    def kind(self) -> str: ...
    @property
    def known(self) -> bool: ...
    def encode(self) -> bytes: ...
    def to_dict(self) -> dict[str, Any]: ...

# --- end protocol ---

# --- registry ---
# --- end registry ---
