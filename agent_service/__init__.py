"""agent_service: the support agent's turn loop behind support.v1.AgentService."""
