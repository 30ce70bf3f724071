"""The iii wire protocol as seen from Python.

The codec itself is Rust (``fnmesh_core::protocol``); this module exposes it for tests and tools::

    frame = fnmesh.Frame.decode(b'{"type":"invokefunction","function_id":"a::b","data":{}}')
    frame.kind        # "invokefunction"
    frame.encode()    # canonical wire bytes
    frame.to_dict()   # the message as Python objects

Decoding is lenient where the protocol asks for it (a missing ``data``/``config`` is ``null``, an
unknown ``type`` decodes with ``known == False``, unknown fields are kept) and strict elsewhere: a
frame that is not a JSON object with a string ``type``, or a known message missing a required
field, raises :class:`fnmesh.errors.MalformedFrame`.
"""

from __future__ import annotations

from fnmesh._native import DEFAULT_MAX_FRAME_BYTES, Frame

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "Frame"]
