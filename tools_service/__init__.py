"""tools_service: the support.v1.ToolsService (order lookup, escalation tickets, the human hand-off)."""
