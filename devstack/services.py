"""The service table: one entry per gRPC service of support.v1, in start order (the agent dials the others)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import FileDescriptor

from agent_service.config import DEFAULT_ADDR as AGENT_DEFAULT_ADDR
from retrieval_service.config import DEFAULT_ADDR as RETRIEVAL_DEFAULT_ADDR
from support.v1 import agent_pb2, retrieval_pb2, tools_pb2
from tools_service.config import DEFAULT_ADDR as TOOLS_DEFAULT_ADDR

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_KB = REPO_ROOT / "kb"


@dataclass(frozen=True)
class ServiceSpec:
    """`name` is the proto service name without "Service", lower case: the package is `<name>_service`, it
    listens on `$<NAME>_ADDR` and reports `grpc_service` (the proto full name) to grpc.health.v1."""

    name: str
    grpc_service: str
    default_addr: str

    @property
    def module(self) -> str:
        return f"{self.name}_service"

    @property
    def addr_var(self) -> str:
        return f"{self.name.upper()}_ADDR"


def _spec(file: FileDescriptor, default_addr: str) -> ServiceSpec:
    (service,) = file.services_by_name.values()
    return ServiceSpec(service.name.removesuffix("Service").lower(), service.full_name, default_addr)


RETRIEVAL = _spec(retrieval_pb2.DESCRIPTOR, RETRIEVAL_DEFAULT_ADDR)
TOOLS = _spec(tools_pb2.DESCRIPTOR, TOOLS_DEFAULT_ADDR)
AGENT = _spec(agent_pb2.DESCRIPTOR, AGENT_DEFAULT_ADDR)
SERVICES: dict[str, ServiceSpec] = {spec.name: spec for spec in (RETRIEVAL, TOOLS, AGENT)}
