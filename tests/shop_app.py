"""The example app the CLI and console tests run with ``fnmesh run``: a typed function with
schemas, an HTTP route and a cron job, plus the functions each test adds (``shop(extra)``)."""

from __future__ import annotations

import textwrap

_BASE = textwrap.dedent(
    """
    import json
    import os
    from pathlib import Path

    import pydantic

    import fnmesh


    class Order(pydantic.BaseModel):
        qty: int


    class Price(pydantic.BaseModel):
        price: int


    app = fnmesh.App("shop")


    @app.function("shop::price", description="Price of an order")
    async def price(order: Order) -> Price:
        return Price(price=order.qty * 3)


    @app.http("GET", "/orders/:id")
    @app.function("shop::order")
    async def order(data: dict) -> dict:
        return {"id": data["path_params"]["id"]}


    @app.cron("0 0 0 1 1 *")
    @app.function("shop::yearly")
    async def yearly(data: dict) -> None:
        pass
    """
)


def shop(extra: str) -> str:
    """The app's source with ``extra`` (more functions, dedented here) at its end."""
    return _BASE + "\n\n" + textwrap.dedent(extra)
