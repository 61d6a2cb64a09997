"""Request metadata keys shared across services."""

from __future__ import annotations

import grpc

# The calling backend states who the customer is; the agent forwards it to every tool call.
CUSTOMER_ID_KEY = "x-customer-id"
REQUEST_ID_KEY = "x-request-id"


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    """The first value of `key` in the call's invocation metadata, or ""."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""
