"""Plumbing shared by the three support.v1 services: env config, JSON logs, gRPC server lifecycle."""
