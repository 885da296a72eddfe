"""Drive the Pulumi SDK's own dynamic-provider server the way the engine does during
`pulumi up`: start `python -m pulumi.dynamic`, read its port, and call Configure,
Check, Diff, Create, Read, Update and Delete over gRPC, the properties serialized with
`pulumi.runtime.rpc.serialize_properties` and the provider pickled into `__provider`.

What the engine sends a dynamic provider (it answers Configure with acceptSecrets
false): secrets as plain values, unknowns (previews) as rpc.UNKNOWN, no deadline on
any call; Create/Update/Delete carry the custom timeout, which the SDK's server drops.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

PROVIDER_KEY = "__provider"


def to_struct(props: dict[str, Any]) -> Any:
    # A private loop, as the SDK's server does: asyncio.run() would clear the thread's event
    # loop, which pulumi.runtime.set_mocks (in other tests) relies on.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rpc.serialize_properties(props, {}))
    finally:
        loop.close()


def from_struct(struct: Any) -> dict[str, Any]:
    return rpc.deserialize_properties(struct, keep_unknowns=True)


@dataclass
class Diff:
    changes: int
    replaces: list[str]
    delete_before_replace: bool

    @property
    def none(self) -> bool:
        return self.changes == provider_pb2.DiffResponse.DIFF_NONE

    @property
    def some(self) -> bool:
        return self.changes == provider_pb2.DiffResponse.DIFF_SOME


@dataclass
class DynamicServer:
    """One `python -m pulumi.dynamic` process and a client for it."""

    env: dict[str, str]
    urn_type: str
    proc: subprocess.Popen | None = None
    stderr_lines: list[str] = field(default_factory=list)
    stub: Any = None
    channel: Any = None

    def start(self, cwd: str | None = None) -> "DynamicServer":
        # As the engine's launcher starts it: unbuffered, with the engine's address as argv[1].
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.dynamic", "127.0.0.1:1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=cwd)
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline().decode().strip())
        threading.Thread(target=self._drain, daemon=True).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr_lines.append(raw.decode(errors="replace").rstrip())

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def log(self) -> str:
        time.sleep(0.2)  # let the drain thread catch up
        return "\n".join(self.stderr_lines)

    def urn(self, name: str) -> str:
        return f"urn:pulumi:test::pim-test::{self.urn_type}::{name}"

    # ------------------------------------------------------------------ RPCs
    def configure(self, config: dict[str, Any]) -> Any:
        return self.stub.Configure(provider_pb2.ConfigureRequest(args=to_struct(config), acceptSecrets=True))

    def check(self, name: str, olds: dict[str, Any], news: dict[str, Any]) -> tuple[dict[str, Any], list]:
        resp = self.stub.Check(provider_pb2.CheckRequest(urn=self.urn(name), olds=to_struct(olds),
                                                         news=to_struct(news)))
        return from_struct(resp.inputs), [(f.property, f.reason) for f in resp.failures]

    def diff(self, name: str, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> Diff:
        resp = self.stub.Diff(provider_pb2.DiffRequest(id=id_, urn=self.urn(name), olds=to_struct(olds),
                                                       news=to_struct(news)))
        return Diff(resp.changes, list(resp.replaces), resp.deleteBeforeReplace)

    def create(self, name: str, props: dict[str, Any], timeout: float = 0) -> tuple[str, dict[str, Any]]:
        resp = self.stub.Create(provider_pb2.CreateRequest(urn=self.urn(name), properties=to_struct(props),
                                                           timeout=timeout))
        return resp.id, from_struct(resp.properties)

    def read(self, name: str, id_: str, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        resp = self.stub.Read(provider_pb2.ReadRequest(id=id_, urn=self.urn(name), properties=to_struct(props)))
        return resp.id, from_struct(resp.properties)

    def update(self, name: str, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dict[str, Any]:
        resp = self.stub.Update(provider_pb2.UpdateRequest(id=id_, urn=self.urn(name), olds=to_struct(olds),
                                                           news=to_struct(news)))
        return from_struct(resp.properties)

    def delete(self, name: str, id_: str, props: dict[str, Any]) -> None:
        self.stub.Delete(provider_pb2.DeleteRequest(id=id_, urn=self.urn(name), properties=to_struct(props)))


def with_provider(props: dict[str, Any], provider: Any) -> dict[str, Any]:
    return {**props, PROVIDER_KEY: serialize_provider(provider)}


def provider_env(**extra: str) -> dict[str, str]:
    """The engine starts plugins with its own environment: pass the test's through."""
    env = dict(os.environ)
    env.update(extra)
    return env
