"""The smallest fnmesh program: register a function in the Rust FunctionsRegistry, select it and
call it, and show the wire frame an iii worker would send to invoke it.

Run it with `make run`. Later issues grow this into an app served by the embedded engine.
"""

from __future__ import annotations

import json

import fnmesh
from fnmesh import FunctionsRegistry


def add(data: dict[str, int]) -> dict[str, int]:
    return {"sum": data["a"] + data["b"]}


def main() -> None:
    registry = FunctionsRegistry()
    registry.register(
        "math::add",
        add,
        owner="hello-app",
        description="Add two integers",
        request_format={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    )
    frame = fnmesh.Frame.from_dict(
        {
            "type": "invokefunction",
            "invocation_id": "0b8f1e34-5f7c-4c2e-9d7a-3d1c2b1a0f9e",
            "function_id": "math::add",
            "data": {"a": 2, "b": 3},
        }
    )
    call = frame.to_dict()
    with registry.select(call["function_id"]) as replica:
        result = replica.handler(call["data"])
    info = registry.lookup("math::add")
    assert info is not None
    print(f"fnmesh {fnmesh.__version__}")
    print(f"wire frame : {frame.encode().decode()}")
    print(f"registered : {info.function_id} ({info.kind}) owned by {info.owners}: {info.description}")
    print(f"result     : {json.dumps(result)}")


if __name__ == "__main__":
    main()
