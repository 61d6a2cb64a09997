"""The agent's outside world: the model, the other services, the conversation store."""
