"""A reef container in Python, on the stubs generated from proto/.

It does what the Rust SDK does, in plain grpcio: register the alias (the node issues a
TLS certificate for the container's endpoint), serve reef.v1.Container on that
endpoint, open the Channel.Attach stream with the alias and lease as metadata, answer
heartbeats, hand what arrives to the handlers and send what they send.
"""

import itertools
import os
import queue
import signal
import socket
import threading
import time
from concurrent import futures

import grpc

from reef.v1 import (
    channel_pb2_grpc,
    container_pb2,
    container_pb2_grpc,
    envelope_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
)

from .state import State

Kind = envelope_pb2.EnvelopeKind

# Envelopes queued for the node before `send` waits.
OUTBOX_CAPACITY = 4096
# Envelopes per frame on the attach stream.
FRAME_ENVELOPES = 256
# Encoded bytes a frame is filled to; one larger envelope still travels, alone.
FRAME_BYTES = 1 << 20
# A node that does not say its frame limit (RegisterResponse.max_frame_bytes) has 8 MiB.
DEFAULT_MAX_FRAME_BYTES = 8 << 20
# REQUEST header: the attempts the caller will still make; such requests are remembered.
ATTEMPTS_LEFT_HEADER = "reef-attempts-left"
# Answers remembered for retries.
ANSWERS_KEPT = 4096
# What framing adds to an envelope inside a Frame: its field tag and length.
ENVELOPE_FRAMING_BYTES = 6


class RemoteError(Exception):
    """An ERROR envelope: the node or the peer failed the request."""

    def __init__(self, error):
        super().__init__(f"{envelope_pb2.ErrorCode.Name(error.code)}: {error.message}")
        self.code = error.code
        self.type = error.type


class Message:
    """A SEND or REQUEST as a handler sees it."""

    def __init__(self, envelope, container):
        # The container it arrived at: what a handler sends, requests and reads state
        # with (handlers can run before `run`'s on_start returns).
        self.container = container
        self.origin = envelope.origin
        self.payload = envelope.payload
        self.content_type = envelope.content_type
        self.headers = dict(envelope.headers)
        self.id = envelope.id
        # Acknowledged mode: the message's number in this container's sequence (the same
        # on a redelivery), and whether it is one.
        self.sequence = envelope.sequence
        self.redelivered = envelope.redelivered
        # Requests: the seconds the caller gives the answer, if it said.
        self.deadline = envelope.deadline_ms / 1000 if envelope.deadline_ms else None


class Reply:
    """What a request handler may return instead of bytes, to set reply headers."""

    def __init__(self, payload, headers=None):
        self.payload = payload
        self.headers = headers or {}


class _Endpoint(container_pb2_grpc.ContainerServicer):
    def __init__(self, container):
        self.container = container

    def _check_node(self, context, call):
        # The node checks its callers (policies, on-behalf-of) before it asks a container
        # anything; a direct call would skip that. Its certificate names reef://node/NAME.
        node = f"reef://node/{self.container.node}"
        uris = [uri.decode() for uri in context.auth_context().get("peer_uri", [])]
        if node not in uris:
            caller = ", ".join(uris) or "a caller without a certificate"
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"Container.{call} is for the node {node} alone, not {caller}: ask the node"
                " (Supervisor.GetContainerStatus, CommandContainer)",
            )

    def Ping(self, request, context):
        return container_pb2.PingResponse(nonce=request.nonce, alias=self.container.alias)

    def Status(self, request, context):
        self._check_node(context, "Status")
        container = self.container
        return supervisor_pb2.ContainerStatus(
            alias=container.alias,
            name=container.name,
            pid=os.getpid(),
            uptime_ms=int((time.monotonic() - container.started) * 1000),
            messages_handled=container.messages_handled,
            requests_handled=container.requests_handled,
        )

    def Command(self, request, context):
        self._check_node(context, "Command")
        container = self.container
        if container.on_command is None:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{container.alias} does not handle the command {request.command!r}"
            )
        try:
            output = container.on_command(request.command, list(request.args))
        except NotImplementedError as error:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, str(error) or f"the command {request.command!r}")
        except Exception as error:
            context.abort(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")
        if isinstance(output, str):
            output = output.encode()
        return supervisor_pb2.CommandResponse(output=output or b"", content_type="text/plain")


def _read_optional(path):
    """The bytes of the file at `path`, or None when no path is given."""
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class Container:
    """One attached alias.

    `on_request(message) -> bytes | Reply` answers requests (an exception becomes an
    ERROR for the caller, with the exception's type and text); `on_message(message)`
    takes sends. Handlers run on a pool of `workers` threads, so they may `request`
    other containers themselves. `on_command(name, args) -> bytes | str` answers
    operator commands (`reef command ALIAS NAME ARGS…`); NotImplementedError, or no
    handler, answers UNIMPLEMENTED.
    """

    def __init__(
        self,
        node,
        ca_path,
        alias,
        name,
        on_request=None,
        on_message=None,
        parent=None,
        token=None,
        workers=8,
        on_command=None,
    ):
        # A container the node started finds its parent and credential in REEF_PARENT
        # and REEF_TOKEN ...
        parent = os.environ.get("REEF_PARENT", "") if parent is None else parent
        token = os.environ.get("REEF_TOKEN", "") if token is None else token
        with open(ca_path, "rb") as f:
            self.ca = f.read()
        # ... and the certificate naming its alias, which it presents to the node, in
        # REEF_CERT and REEF_KEY.
        cert, key = _read_optional(os.environ.get("REEF_CERT")), _read_optional(os.environ.get("REEF_KEY"))
        self.alias, self.name = alias, name
        self.on_request, self.on_message, self.on_command = on_request, on_message, on_command
        self.started = time.monotonic()
        self.requests_handled = 0
        self.messages_handled = 0
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=key if cert and key else None,
            certificate_chain=cert if cert and key else None,
        )
        # The node's frames may be as large as its frame limit; grpc receives 4 MiB.
        self.channel = grpc.secure_channel(
            node, credentials, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.supervisor = supervisor_pb2_grpc.SupervisorStub(self.channel)
        self.state = State(self.channel)
        # From the clock: a restarted process must not reuse the ids of its past life.
        self._ids = itertools.count(time.time_ns())
        self._outbox = queue.Queue(maxsize=OUTBOX_CAPACITY)
        self._pending = {}
        # (origin, id) of retryable requests → their answer (None while running), oldest
        # first, for answering a retry without running the handler twice.
        self._answered = {}
        self._lock = threading.Lock()
        self._handlers = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reef-handler")
        self.closed = threading.Event()

        # Bind the endpoint first so its address can be registered, then serve TLS with
        # the certificate the node issues for it.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        container_pb2_grpc.add_ContainerServicer_to_server(_Endpoint(self), self.server)
        granted = self.supervisor.Register(
            supervisor_pb2.RegisterRequest(
                alias=alias,
                name=name,
                parent=parent,
                pid=os.getpid(),
                endpoint=self._reserve_endpoint(),
                token=token,
            ),
            timeout=10,
        )
        self.lease = granted.lease
        self.node = granted.node
        self.max_frame_bytes = granted.max_frame_bytes or DEFAULT_MAX_FRAME_BYTES
        # Callers present a certificate from the node's CA (grpcio cannot ask for one
        # without requiring it), and Status and Command check that it is the node's.
        credentials = grpc.ssl_server_credentials(
            [(granted.endpoint_key_pem.encode(), granted.endpoint_cert_pem.encode())],
            root_certificates=self.ca,
            require_client_auth=True,
        )
        self.server.add_secure_port(f"127.0.0.1:{self._port}", credentials)
        self.server.start()

        responses = channel_pb2_grpc.ChannelStub(self.channel).Attach(
            self._frames(), metadata=(("reef-alias", alias), ("reef-lease", self.lease))
        )
        self._reader = threading.Thread(target=self._read, args=(responses,), daemon=True)
        self._reader.start()

    def _reserve_endpoint(self):
        # grpcio cannot start TLS before the certificate exists, and the certificate
        # needs the address: pick a free port, register it, then bind it.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self._port = probe.getsockname()[1]
        return f"127.0.0.1:{self._port}"

    def _frames(self):
        # Frames stay below the node's frame limit: what does not fit waits for the next.
        budget = min(FRAME_BYTES, self.max_frame_bytes // 2)
        carry = None
        while True:
            envelope = carry if carry is not None else self._outbox.get()
            carry = None
            if envelope is None:
                return
            batch = [envelope]
            size = envelope.ByteSize() + ENVELOPE_FRAMING_BYTES
            while len(batch) < FRAME_ENVELOPES:
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    yield envelope_pb2.Frame(envelopes=batch)
                    return
                more_size = more.ByteSize() + ENVELOPE_FRAMING_BYTES
                if size + more_size > budget:
                    carry = more
                    break
                batch.append(more)
                size += more_size
            yield envelope_pb2.Frame(envelopes=batch)

    def _read(self, responses):
        try:
            for frame in responses:
                for envelope in frame.envelopes:
                    self._dispatch(envelope)
        except grpc.RpcError:
            pass
        finally:
            self.closed.set()
            with self._lock:
                for slot in self._pending.values():
                    slot["error"] = ConnectionError("attach stream closed")
                    slot["done"].set()

    def _dispatch(self, envelope):
        if envelope.kind == Kind.ENVELOPE_KIND_HEARTBEAT and envelope.correlation_id == 0:
            self._outbox.put(envelope_pb2.Envelope(kind=Kind.ENVELOPE_KIND_HEARTBEAT, correlation_id=envelope.id))
        elif envelope.kind in (Kind.ENVELOPE_KIND_REPLY, Kind.ENVELOPE_KIND_ERROR):
            with self._lock:
                slot = self._pending.pop(envelope.correlation_id, None)
            if slot is not None:
                slot["envelope"] = envelope
                slot["done"].set()
        elif envelope.kind == Kind.ENVELOPE_KIND_REQUEST:
            if self._admit(envelope):
                self._handlers.submit(self._answer, envelope)
        elif envelope.kind == Kind.ENVELOPE_KIND_SEND:
            self._handlers.submit(self._take, envelope)

    def _admit(self, envelope):
        """Whether to run a request: a retry (same origin and id) of one still running is
        dropped, and one already answered gets the same answer again (envelope.proto,
        "Retries"). Only requests whose caller says it may retry are remembered."""
        if ATTEMPTS_LEFT_HEADER not in envelope.headers:
            return True
        key = (envelope.origin, envelope.id)
        with self._lock:
            if key not in self._answered:
                self._answered[key] = None  # running
                while len(self._answered) > ANSWERS_KEPT:
                    self._answered.pop(next(iter(self._answered)))
                return True
            answer = self._answered[key]
        if answer is not None:
            self._outbox.put(answer)
        return False

    def _answer(self, envelope):
        self.requests_handled += 1
        try:
            if self.on_request is None:
                raise NotImplementedError(f"{self.alias} does not answer requests")
            reply = self.on_request(Message(envelope, self))
            if not isinstance(reply, Reply):
                reply = Reply(reply)
            answer = envelope_pb2.Envelope(
                kind=Kind.ENVELOPE_KIND_REPLY,
                correlation_id=envelope.id,
                destination=envelope.origin,
                payload=reply.payload,
                headers=reply.headers,
            )
        except Exception as error:  # the caller gets the error, typed
            answer = envelope_pb2.Envelope(
                kind=Kind.ENVELOPE_KIND_ERROR,
                correlation_id=envelope.id,
                destination=envelope.origin,
                error=envelope_pb2.Error(
                    code=envelope_pb2.ErrorCode.ERROR_CODE_UNKNOWN, type=type(error).__name__, message=str(error)
                ),
            )
        if ATTEMPTS_LEFT_HEADER in envelope.headers:
            with self._lock:
                self._answered[(envelope.origin, envelope.id)] = answer
        self._outbox.put(answer)

    def _take(self, envelope):
        self.messages_handled += 1
        if self.on_message is not None:
            try:
                self.on_message(Message(envelope, self))
            except Exception as error:  # a send has nobody to tell: say it in the log
                print(f"{self.alias}: on_message failed: {type(error).__name__}: {error}", flush=True)
        if envelope.sequence:
            # Acknowledged mode: handled, the node may forget it.
            self._outbox.put(envelope_pb2.Envelope(kind=Kind.ENVELOPE_KIND_ACK, correlation_id=envelope.sequence))

    def _fitting(self, envelope):
        """`envelope`, or ValueError when no frame the node reads could carry it."""
        size = envelope.ByteSize() + ENVELOPE_FRAMING_BYTES
        if size > self.max_frame_bytes:
            raise ValueError(
                f"an envelope of {size} bytes exceeds the node's frame limit of {self.max_frame_bytes} bytes"
            )
        return envelope

    def send(self, destination, payload, headers=None, acknowledged=False):
        """Sends `payload` to `destination`, fire-and-forget (or, `acknowledged`, kept by
        the node until the receiver handled it)."""
        self._outbox.put(
            self._fitting(
                envelope_pb2.Envelope(
                    kind=Kind.ENVELOPE_KIND_SEND,
                    id=next(self._ids),
                    destination=destination,
                    payload=payload,
                    headers=headers or {},
                    acknowledged=acknowledged,
                )
            )
        )

    def request(self, destination, payload, timeout=5.0, headers=None):
        """Sends a request and returns the reply's payload, or raises RemoteError."""
        return self.call(destination, payload, timeout, headers).payload

    def call(self, destination, payload, timeout=5.0, headers=None):
        """`request`, answered with a Reply: the payload and the reply's headers."""
        request_id = next(self._ids)
        request = self._fitting(
            envelope_pb2.Envelope(
                kind=Kind.ENVELOPE_KIND_REQUEST,
                id=request_id,
                destination=destination,
                payload=payload,
                headers=headers or {},
                deadline_ms=max(1, int(timeout * 1000)),
            )
        )
        slot = {"done": threading.Event()}
        with self._lock:
            self._pending[request_id] = slot
        self._outbox.put(request)
        if not slot["done"].wait(timeout + 0.5):
            with self._lock:
                self._pending.pop(request_id, None)
            raise TimeoutError(f"no answer from {destination} within {timeout}s")
        if "error" in slot:
            raise slot["error"]
        envelope = slot["envelope"]
        if envelope.kind == Kind.ENVELOPE_KIND_ERROR:
            raise RemoteError(envelope.error)
        return Reply(envelope.payload, dict(envelope.headers))

    def close(self):
        try:
            self.supervisor.Deregister(supervisor_pb2.DeregisterRequest(alias=self.alias, lease=self.lease), timeout=5)
        except grpc.RpcError:
            pass
        self._outbox.put(None)
        self._handlers.shutdown(wait=False, cancel_futures=True)
        self.server.stop(grace=1)
        self.channel.close()


def run(name, on_request=None, on_message=None, on_start=None, alias=None, on_command=None):
    """Runs a container until SIGTERM (or until the node ends its stream), then
    deregisters. The node, CA and alias come from REEF_NODE, REEF_CA and REEF_ALIAS
    (else `alias`, else `name`). `on_start(container)` runs once attached."""
    container = Container(
        node=os.environ.get("REEF_NODE", "127.0.0.1:7400"),
        ca_path=os.environ.get("REEF_CA", ".reef/tls/ca.pem"),
        alias=os.environ.get("REEF_ALIAS") or alias or name,
        name=name,
        on_request=on_request,
        on_message=on_message,
        on_command=on_command,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if on_start is not None:
        on_start(container)
    while not stop.is_set() and not container.closed.is_set():
        stop.wait(0.2)
    container.close()
    return container
