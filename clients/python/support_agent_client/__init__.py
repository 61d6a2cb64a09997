"""Typed async client for the support-agent AgentService (support.v1).

    from support_agent_client import AgentClient

    async with AgentClient("127.0.0.1:50051", customer_id="cust-001") as client:
        response = await client.chat("conv-1", "Where is my order ORD-12345?")
        if response.action.state == ActionState.ACTION_STATE_PENDING:  # e.g. "Cancel order ORD-67890 (...)"
            response = await client.confirm_action("conv-1", response.action.action_id)  # the UI's button
        async for event in client.stream_chat("conv-1", "And when will it arrive?"):
            ...
        async for event in client.watch("conv-1"):  # every event, live; resumes after a disconnect
            ...

The message types are the generated `support.v1` classes, re-exported here.
"""

from __future__ import annotations

from support.v1.agent_pb2 import (
    ChatRequest,
    ChatResponse,
    ConversationEvent,
    ConversationState,
    Escalation,
    GetConversationRequest,
    GetConversationResponse,
    GuardrailFlag,
    GuardrailStage,
    SourcesRetrieved,
    StreamChatRequest,
    StreamChatResponse,
    TextDelta,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    Turn,
    Usage,
    WatchHeartbeat,
)
from support.v1.types_pb2 import Action, ActionState, EscalationReason, Priority, SourceRef
from support_agent_client._client import AgentClient, new_turn_id
from support_agent_client._errors import (
    ActionNotPending,
    AgentError,
    ConversationBusy,
    ConversationNotFound,
    DeadlineExceeded,
    FieldViolation,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ActionNotPending",
    "ActionState",
    "AgentClient",
    "AgentError",
    "ChatRequest",
    "ChatResponse",
    "ConversationBusy",
    "ConversationEvent",
    "ConversationNotFound",
    "ConversationState",
    "DeadlineExceeded",
    "Escalation",
    "EscalationReason",
    "FieldViolation",
    "GetConversationRequest",
    "GetConversationResponse",
    "GuardrailFlag",
    "GuardrailStage",
    "InvalidRequest",
    "Overloaded",
    "PermissionDenied",
    "Priority",
    "SourceRef",
    "SourcesRetrieved",
    "StreamChatRequest",
    "StreamChatResponse",
    "TextDelta",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "Turn",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "WatchHeartbeat",
    "__version__",
    "from_rpc_error",
    "new_turn_id",
]
