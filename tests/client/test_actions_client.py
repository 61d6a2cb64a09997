"""support_agent_client's confirm_action / decline_action against the real stack (offline engine): a proposed
cancellation declined, proposed again and confirmed once; a second press is `ActionNotPending`."""

from __future__ import annotations

import pytest
from support_agent_client import ActionNotPending, ActionState, AgentClient, ConversationNotFound

from devstack.inprocess import InProcessStack
from tests.client.conftest import CUSTOMER

pytestmark = pytest.mark.asyncio(loop_scope="module")

PENDING = ActionState.Value("ACTION_STATE_PENDING")


async def test_decline_then_confirm_by_button(stack: InProcessStack) -> None:
    async with AgentClient(stack.agent_addr, customer_id=CUSTOMER, timeout=30) as client:
        proposed = await client.chat("conv-action", "Please cancel my order ORD-67890")
        assert proposed.action.state == PENDING
        declined = await client.decline_action("conv-action", proposed.action.action_id)
        assert declined.action.state == ActionState.Value("ACTION_STATE_DECLINED")

        again = await client.chat("conv-action", "Please cancel my order ORD-67890")
        assert again.action.state == PENDING and again.action.action_id != proposed.action.action_id
        confirmed = await client.confirm_action("conv-action", again.action.action_id, turn_id="press-1")
        assert confirmed.action.state == ActionState.Value("ACTION_STATE_EXECUTED")
        assert confirmed.action.confirmation == "button"
        retried = await client.confirm_action("conv-action", again.action.action_id, turn_id="press-1")
        assert retried.replayed and retried.action == confirmed.action
        with pytest.raises(ActionNotPending):
            await client.confirm_action("conv-action", again.action.action_id)
        with pytest.raises(ConversationNotFound):
            await client.confirm_action("conv-action", "act-not-there")
