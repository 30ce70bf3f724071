"""The smallest fnmesh app on the embedded default: declare a function, start the engine inside
this process, call the function locally and through the engine, and show what discovery says.

Run it with `make run`; `make run ARGS=--serve` keeps serving so that iii workers can connect
(`III_URL` printed below) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pydantic

import fnmesh


class Pair(pydantic.BaseModel):
    a: int
    b: int


class Sum(pydantic.BaseModel):
    sum: int


app = fnmesh.App("hello", port=0, log_level="warn")


@app.function("math::add", description="Add two integers")
async def add(pair: Pair, ctx: fnmesh.Context) -> Sum:
    return Sum(sum=pair.a + pair.b)


async def main(serve: bool) -> None:
    async with app:
        local = await app.call("math::add", {"a": 2, "b": 3})
        info = await app.call("engine::functions::info", {"function_id": "math::add"})
        print(f"fnmesh {fnmesh.__version__}: engine at {app.url}")
        print(f"local call : math::add(2, 3) = {local!r}")
        print(f"discovery  : {info['function_id']}: {info['description']}, input {info['request_schema']}")
        try:
            await app.call("math::add", {"a": "two", "b": 3})
        except fnmesh.ValidationFailed as exc:
            print(f"bad input  : {exc.code}: {exc}")
        if serve:
            print(f"serving; iii workers connect with III_URL={app.url} (Ctrl-C stops)")
            await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main("--serve" in sys.argv[1:]))
