"""Typed inputs and answers of a restricted listener's policy functions (docs/access-control.md).

An app serves them like any function; the engine calls them:

- the auth function (``auth_function_id``) with :class:`AuthInput` once per connection, before the
  connection is accepted, answering :class:`AuthResult`;
- the middleware (``middleware_function_id``) with :class:`MiddlewareInput` instead of every
  allowed call of a non-engine function; its answer is the call's answer;
- the registration hooks with :class:`OnFunctionRegistrationInput`,
  :class:`OnTriggerRegistrationInput` and :class:`OnTriggerTypeRegistrationInput`, answering the
  matching ``...Result`` (fields left ``None`` keep the worker's value) or raising to deny.

The shapes are iii's (``iii_helpers.worker_connection_manager``), so a policy function written for
iii works unchanged. A policy function that raises, times out or answers something else refuses
the connection or denies the registration: access control fails closed.
"""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = [
    "AuthInput",
    "AuthResult",
    "MiddlewareInput",
    "OnFunctionRegistrationInput",
    "OnFunctionRegistrationResult",
    "OnTriggerRegistrationInput",
    "OnTriggerRegistrationResult",
    "OnTriggerTypeRegistrationInput",
    "OnTriggerTypeRegistrationResult",
]


class AuthInput(pydantic.BaseModel):
    """What the auth function is given: the connection's upgrade request."""

    headers: dict[str, str]
    """Headers of the WebSocket upgrade, names in lower case."""
    query_params: dict[str, list[str]]
    """Query parameters of the upgrade URL, each with every value it was given."""
    ip_address: str
    """The peer's IP address."""


class AuthResult(pydantic.BaseModel):
    """What the auth function grants the connection (every field optional)."""

    namespaces: dict[str, list[str]] = pydantic.Field(default_factory=dict)
    """Grants scoped to one namespace each, e.g. ``{"orders": ["svc::*"]}``."""
    allowed_functions: list[str] = pydantic.Field(default_factory=list)
    """Further function ids callable in the ``default`` namespace."""
    forbidden_functions: list[str] = pydantic.Field(default_factory=list)
    """Ids denied whatever else allows them."""
    allowed_trigger_types: list[str] | None = None
    """Trigger types the connection may bind (``None``: all)."""
    allow_trigger_type_registration: bool = False
    """Whether the connection may register trigger types."""
    allow_function_registration: bool = True
    """Whether the connection may register functions."""
    function_registration_prefix: str | None = None
    """Every function the connection registers gets the id ``PREFIX::id``."""
    context: dict[str, Any] = pydantic.Field(default_factory=dict)
    """Handed to the middleware and the hooks with every call and registration."""


class MiddlewareInput(pydantic.BaseModel):
    """What the middleware is given instead of the call (it calls the function itself)."""

    function_id: str
    payload: Any = None
    action: dict[str, Any] | None = None
    """``{"type": "void"}`` or ``{"type": "enqueue", "queue": ...}`` when the call had one."""
    context: dict[str, Any] = pydantic.Field(default_factory=dict)
    namespace: str | None = None


class OnFunctionRegistrationInput(pydantic.BaseModel):
    function_id: str
    description: str | None = None
    metadata: dict[str, Any] | None = None
    namespace: str = "default"
    context: dict[str, Any] = pydantic.Field(default_factory=dict)


class OnFunctionRegistrationResult(pydantic.BaseModel):
    function_id: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None


class OnTriggerRegistrationInput(pydantic.BaseModel):
    trigger_id: str
    trigger_type: str
    function_id: str
    config: Any = None
    metadata: dict[str, Any] | None = None
    namespace: str = "default"
    context: dict[str, Any] = pydantic.Field(default_factory=dict)


class OnTriggerRegistrationResult(pydantic.BaseModel):
    trigger_id: str | None = None
    trigger_type: str | None = None
    function_id: str | None = None
    config: Any = None


class OnTriggerTypeRegistrationInput(pydantic.BaseModel):
    trigger_type_id: str
    description: str = ""
    context: dict[str, Any] = pydantic.Field(default_factory=dict)


class OnTriggerTypeRegistrationResult(pydantic.BaseModel):
    trigger_type_id: str | None = None
    description: str | None = None
