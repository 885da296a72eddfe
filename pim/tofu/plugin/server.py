"""Serve a Provider to Terraform/OpenTofu: the go-plugin handshake, TLS, tfplugin6 over gRPC.

Terraform starts the provider binary with TF_PLUGIN_MAGIC_COOKIE set and reads one
handshake line from its stdout: `1|6|unix|<socket>|grpc|<server cert, base64 DER>`.
It then talks gRPC over TLS on that socket, trusting exactly that certificate
(name "localhost"), on a socket in a fresh 0700 directory. `plugin.GRPCController/Shutdown` ends the process, so
Terraform never waits for a kill timeout.

Long work (ApplyResourceChange: a build, a deploy) runs on the main thread, so an
interrupt raises KeyboardInterrupt inside the engine, which stops its QEMU and
publishes nothing. Interrupts are real signals to the main thread (see
pim.engine.interrupt): StopProvider sends it SIGINT, Ctrl-C reaches it directly,
SIGTERM stops the work and then the process, and so does Terraform's death (the
provider would otherwise build on with parent 1).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import traceback
from concurrent import futures
from typing import Any, Callable

from pim.tofu.plugin import cty
from pim.tofu.plugin.base import Diag, Diags, Provider, Schema

MAGIC_COOKIE = ("TF_PLUGIN_MAGIC_COOKIE", "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2")
PROTOCOL = 6


def _new_certificate() -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for "localhost" valid for a day: (key PEM, cert PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PIM")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                         content_commitment=False, data_encipherment=False, key_agreement=True,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _certificate() -> tuple[bytes, bytes, bytes]:
    """(key PEM, cert PEM, cert DER), kept for a few hours in PIM's private runtime
    directory: Terraform starts the provider several times per command, and making a
    key pair costs more than the rest of the start-up (importing cryptography)."""
    import ssl
    import time

    from pim.engine.paths import runtime_dir

    key_file, cert_file = runtime_dir() / "tf-provider.key", runtime_dir() / "tf-provider.crt"
    try:
        if time.time() - cert_file.stat().st_mtime < 6 * 3600:
            key_pem, cert_pem = key_file.read_bytes(), cert_file.read_bytes()
            return key_pem, cert_pem, ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    except (OSError, ValueError):
        pass
    key_pem, cert_pem = _new_certificate()
    for path, data in ((key_file, key_pem), (cert_file, cert_pem)):
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return key_pem, cert_pem, ssl.PEM_cert_to_DER_cert(cert_pem.decode())


def _diagnostics(errors: list[Diag]) -> list[Any]:
    from pim.tofu.plugin.proto import ERROR, WARNING, M

    out = []
    for d in errors:
        msg = M["Diagnostic"](severity=WARNING if d.warning else ERROR, summary=d.summary, detail=d.detail)
        if d.attribute:
            msg.attribute.steps.add(attribute_name=d.attribute)
        out.append(msg)
    return out


def _value(dv: Any) -> Any:
    if dv.msgpack:
        return cty.decode(dv.msgpack)
    return json.loads(dv.json) if dv.json else None


def _dv(value: dict[str, Any] | None, schema: Schema) -> Any:
    from pim.tofu.plugin.proto import M

    return M["DynamicValue"](msgpack=cty.encode(None if value is None else schema.conform(value)))


def _schema_msg(schema: Schema) -> Any:
    from pim.tofu.plugin.proto import M

    block = M["Block"](version=schema.version, description=schema.description)
    for a in schema.attrs:
        block.attributes.add(name=a.name, type=cty.type_json(a.type), description=a.description,
                             required=a.required, optional=a.optional, computed=a.computed, sensitive=a.sensitive)
    return M["Schema"](version=schema.version, block=block)


class Service:
    """tfplugin6.Provider's methods over a Provider object."""

    def __init__(self, provider: Provider, main: "MainThread"):
        self.p, self.main = provider, main

    def _kind(self, type_name: str, data: bool = False) -> Any:
        table = self.p.data_sources if data else self.p.resources
        if type_name not in table:
            raise Diag(f"this provider has no {'data source' if data else 'resource'} type {type_name!r}")
        return table[type_name]

    def GetMetadata(self, req: Any, resp: Any) -> None:
        resp.server_capabilities.get_provider_schema_optional = True
        for name in self.p.resources:
            resp.resources.add(type_name=name)
        for name in self.p.data_sources:
            resp.data_sources.add(type_name=name)

    def GetProviderSchema(self, req: Any, resp: Any) -> None:
        resp.provider.CopyFrom(_schema_msg(self.p.schema))
        for name, r in self.p.resources.items():
            resp.resource_schemas.add(key=name, value=_schema_msg(r.schema))
        for name, d in self.p.data_sources.items():
            resp.data_source_schemas.add(key=name, value=_schema_msg(d.schema))
        resp.server_capabilities.get_provider_schema_optional = True

    def GetFunctions(self, req: Any, resp: Any) -> None:
        pass

    def ValidateProviderConfig(self, req: Any, resp: Any) -> None:
        pass

    def ValidateResourceConfig(self, req: Any, resp: Any) -> None:
        self._kind(req.type_name).validate(_value(req.config))

    def ValidateDataResourceConfig(self, req: Any, resp: Any) -> None:
        self._kind(req.type_name, data=True).validate(_value(req.config))

    def ConfigureProvider(self, req: Any, resp: Any) -> None:
        self.p.configure(_value(req.config) or {})

    def UpgradeResourceState(self, req: Any, resp: Any) -> None:
        r = self._kind(req.type_name)
        state = json.loads(req.raw_state.json) if req.raw_state.json else None
        upgraded = None if state is None else r.upgrade(req.version, state)
        resp.upgraded_state.CopyFrom(_dv(upgraded, r.schema))

    def ReadResource(self, req: Any, resp: Any) -> None:
        r = self._kind(req.type_name)
        current = _value(req.current_state)
        resp.new_state.CopyFrom(_dv(None if current is None else r.read(current), r.schema))
        resp.private = req.private

    def PlanResourceChange(self, req: Any, resp: Any) -> None:
        r = self._kind(req.type_name)
        prior, proposed = _value(req.prior_state), _value(req.proposed_new_state)
        if proposed is None:  # destroy
            resp.planned_state.CopyFrom(_dv(None, r.schema))
            return
        plan = r.plan(prior, proposed, _value(req.config))
        resp.planned_state.CopyFrom(_dv(plan.state, r.schema))
        for name in plan.replace:
            resp.requires_replace.add().steps.add(attribute_name=name)
        resp.diagnostics.extend(_diagnostics(plan.warnings))

    def ApplyResourceChange(self, req: Any, resp: Any) -> None:
        r = self._kind(req.type_name)
        prior, planned, config = _value(req.prior_state), _value(req.planned_state), _value(req.config)
        resp.new_state.CopyFrom(_dv(prior, r.schema))  # what stays if the change fails
        if planned is None:
            self.main.call(lambda: r.delete(prior))
            resp.new_state.CopyFrom(_dv(None, r.schema))
        elif prior is None:
            resp.new_state.CopyFrom(_dv(self.main.call(lambda: r.create(planned, config)), r.schema))
        else:
            resp.new_state.CopyFrom(_dv(self.main.call(lambda: r.update(prior, planned, config)), r.schema))

    def ImportResourceState(self, req: Any, resp: Any) -> None:
        r = self._kind(req.type_name)
        resp.imported_resources.add(type_name=req.type_name, state=_dv(r.import_state(req.id), r.schema))

    def ReadDataSource(self, req: Any, resp: Any) -> None:
        d = self._kind(req.type_name, data=True)
        resp.state.CopyFrom(_dv(d.read(_value(req.config)), d.schema))

    def StopProvider(self, req: Any, resp: Any) -> None:
        self.main.interrupt()


class MainThread:
    """Runs submitted calls on the main thread (where KeyboardInterrupt lands).

    While a call runs, the first SIGINT or SIGTERM raises `Interrupted` in it; idle,
    SIGINT is ignored (Terraform handles Ctrl-C through StopProvider) and SIGTERM
    ends the loop. After SIGTERM a running call is interrupted and the loop ends once
    it has unwound.
    """

    def __init__(self) -> None:
        from pim.engine.interrupt import Unwinder

        self.jobs: queue.Queue[Any] = queue.Queue()
        self.stopped = threading.Event()
        self.busy = False
        self.signals = Unwinder(on_signal=self._on_signal)

    def call(self, fn: Callable[[], Any]) -> Any:
        done: futures.Future[Any] = futures.Future()
        self.jobs.put((fn, done))
        return done.result()

    def stop(self) -> None:
        self.stopped.set()
        self.jobs.put(None)

    def interrupt(self) -> None:
        """StopProvider: interrupt the running call, from any thread."""
        from pim.engine.interrupt import signal_main_thread

        if self.busy:
            signal_main_thread(signal.SIGINT)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.stopped.set()
            if not self.busy:
                raise KeyboardInterrupt("SIGTERM")  # out of the idle jobs.get()

    def loop(self) -> None:
        """Run calls until stop() or SIGTERM (main thread only: it installs the signal handlers)."""
        from pim.engine.interrupt import watch_parent

        self.signals.install()
        watch_parent()  # Terraform gone: SIGTERM, so a build in progress stops in order
        while not self.stopped.is_set():
            try:
                self._next()
            except KeyboardInterrupt:  # idle (SIGINT ignored; SIGTERM has set `stopped`), or a late signal
                continue

    def _next(self) -> None:
        job = self.jobs.get()
        if job is None:
            self.stopped.set()
            return
        fn, done = job
        try:
            self.signals.arm()  # before `busy`: a StopProvider seeing busy must find the handler armed
            self.busy = True
            done.set_result(fn())
        except KeyboardInterrupt:
            if not done.done():
                done.set_exception(Diag("interrupted: the change was stopped and nothing half-done was kept"))
        except BaseException as e:  # noqa: BLE001 - handed to the gRPC thread waiting for it
            if not done.done():
                done.set_exception(e)
        finally:
            self.signals.disarm()
            self.busy = False


def _handler(service: Service, method: str) -> Any:
    import grpc

    from pim.tofu.plugin.proto import METHODS, M

    req_cls, resp_cls = (M[n] for n in METHODS[method])

    def call(req: Any, context: Any) -> Any:
        resp = resp_cls()
        try:
            getattr(service, method)(req, resp)
        except (Diag, Diags) as e:
            diags = e.diags if isinstance(e, Diags) else [e]
            resp.diagnostics.extend(_diagnostics(diags))
        except Exception as e:  # noqa: BLE001 - reported to Terraform, not swallowed
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            resp.diagnostics.extend(_diagnostics([Diag(f"{method} failed: {type(e).__name__}: {e}")]))
        return resp

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=req_cls.FromString,
                                               response_serializer=resp_cls.SerializeToString)


def serve(provider: Provider) -> int:
    """Serve until Terraform says Shutdown; then the process ends (os._exit)."""
    if os.environ.get(MAGIC_COOKIE[0]) != MAGIC_COOKIE[1]:
        print("This is a Terraform/OpenTofu provider plugin: Terraform runs it, people do not.\n"
              "Install it with dev_overrides or a filesystem_mirror (see the pim README).", file=sys.stderr)
        return 1
    versions = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(PROTOCOL)).split(",")
    if str(PROTOCOL) not in versions:
        print(f"Terraform offers plugin protocol(s) {','.join(versions)}; this provider speaks {PROTOCOL} "
              "(Terraform >= 1.0 or OpenTofu)", file=sys.stderr)
        return 1
    # The provider forks QEMU and qemu-nbd while it serves: no gRPC fork handlers.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    import grpc

    from pim.tofu.plugin.proto import METHODS

    main = MainThread()
    service = Service(provider, main)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("tfplugin6.Provider", {m: _handler(service, m) for m in METHODS}),
        grpc.method_handlers_generic_handler("plugin.GRPCController", {"Shutdown": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: (main.stop(), b"")[1],
            request_deserializer=lambda b: b, response_serializer=lambda b: b)}),
    ])
    key_pem, cert_pem, cert_der = _certificate()
    # Terraform passes PLUGIN_CLIENT_CERT but presents no client certificate in the TLS
    # handshake: requiring one fails every call. The socket is private (0700 directory).
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    sock_dir = tempfile.mkdtemp(prefix="pim-tf-", dir=os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or None)
    sock = os.path.join(sock_dir, "plugin.sock")
    server.add_secure_port(f"unix:{sock}", creds)
    server.start()
    cert = base64.b64encode(cert_der).decode().rstrip("=")
    sys.stdout.write(f"1|{PROTOCOL}|unix|{sock}|grpc|{cert}\n")
    sys.stdout.flush()
    try:
        main.loop()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=0.2).wait()
        for path in (sock, sock_dir):
            try:
                os.rmdir(path) if path == sock_dir else os.unlink(path)
            except OSError:
                pass
    # Terraform starts the provider two or three times per command and waits for each
    # to exit: skip the interpreter's teardown (gRPC's threads, module finalizers),
    # ~0.1-0.2 s a time. Nothing is left to flush but the standard streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
