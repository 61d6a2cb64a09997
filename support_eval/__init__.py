"""`support-eval`: replayable labelled conversations that score the agent over its gRPC API.

Modules: `suite` (the suite format and its loader), `records` (what the agent did, turn by turn),
`scorer` (pure metrics and failed expectations), `kb` (reading and ingesting a knowledge-base folder),
`stack` (starting the three services as subprocesses), `driver` (replaying conversations over
`AgentService.Chat`), `report` (scorecard text, JSON and baseline differences), `cli` (the command).
"""
