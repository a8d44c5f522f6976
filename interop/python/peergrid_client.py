#!/usr/bin/env python3
"""A peergrid submitter in Python, written from the text of proto/peergrid.proto alone.

It signs one task, runs it on one worker over the peergrid transport (iroh QUIC, ALPN
`peergrid/grpc/1`, one HTTP/2 connection per QUIC bidirectional stream, gRPC on top), uploads
the blobs the worker lacks, and accepts the answer only after checking the signed receipt by
the .proto's rules ("Signing rules", 2): the signature over "peergrid/receipt/v1" || R, the
signer being the key the QUIC connection proved, the task digest being BLAKE3 of the manifest
it sent, and the output hashes. It shares no code with peergrid's Rust crates: the messages
are generated from the .proto at start-up (grpcio-tools' protoc, into a temporary directory),
and every rule below cites the .proto section it comes from.

    python peergrid_client.py --worker KEY@IP:PORT [--key FILE] [--stdin FILE]
        [--input FILE]... [--env NAME=VALUE]... MODULE [-- ARGS...]

`--worker` is what a worker prints when ready ("listening on KEY@IP:PORT"): the worker's
Ed25519 key as 64 hex digits, the key its connection must prove, and its UDP address.
`--key` is a secret key file as `peergrid keygen` writes it (the 32-byte Ed25519 seed as 64
hex characters); without it a fresh key is made and its public half printed on stderr (a
worker then runs the task only with `--trust-any-key`).

Prints the task's verified stdout on stdout (its stderr on stderr, and a summary line), or with
`--json` one JSON object. Exit codes:
    0  the receipt verified; the output printed is the one it signs (whatever the outcome)
    2  bad usage or unreadable input files
    3  the worker could not be reached, refused the connection or the task, or broke protocol
    4  the receipt failed a check: the result MUST NOT count (the message says which check)

`--tamper receipt|signature|stdout` alters the answer as a path between the peers could,
before it is checked (a testing aid: the client must then refuse it with exit code 4).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import iroh
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

# --- Constants, each from the .proto's header -------------------------------------------------

# "Transport": the ALPN of a gRPC connection.
ALPN = b"peergrid/grpc/1"
# "Signing rules": the domain strings, ASCII, no terminator.
TASK_DOMAIN = b"peergrid/task/v1"
RECEIPT_DOMAIN = b"peergrid/receipt/v1"
# "Sizes and limits".
MAX_MESSAGE_BYTES = 25_165_824  # any gRPC message, either direction
MAX_CHUNK_BYTES = 1_048_576  # BlobChunk.data
MAX_BLOB_BYTES = 268_435_456
MAX_RECEIPT_BYTES = 4096  # the encoded Receipt
MAX_RECEIPT_TEXT_BYTES = 1024  # Receipt.trap and Receipt.runtime_fingerprint
MAX_STDIN_BYTES = 4_194_304
MAX_ID_BYTES = 128
# "Encodings": gRPC status codes, by number.
STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}
FAILED_PRECONDITION = 9
# "Admission", 0: QUIC application error codes a worker closes a connection with.
QUIC_CLOSE_REASONS = {
    1: "its trust policy does not admit the key this connection proved "
       "(start the worker with --trust <this key> or --trust-any-key)",
    2: "no stream was opened within 10 s",
}
SERVICE = "peergrid.v1.Worker"

EXIT_OK, EXIT_USAGE, EXIT_WORKER, EXIT_BAD_RECEIPT = 0, 2, 3, 4


class UsageError(Exception):
    """Bad arguments or unreadable input files (exit 2)."""


class WorkerError(Exception):
    """Unreachable or refusing worker, or a protocol error (exit 3)."""


class ReceiptRejected(Exception):
    """The answer failed a check of "Signing rules", 2 (exit 4)."""


def blake3_hash(data: bytes) -> bytes:
    """"Encodings": BLAKE3 with the default 32-byte output, over the raw bytes."""
    return blake3.blake3(data).digest()


# --- Messages, generated from the .proto ---------------------------------------------------


def load_messages(proto_path: Path):
    """Compiles `proto_path` with grpcio-tools' protoc and imports the generated module."""
    from grpc_tools import protoc

    if not proto_path.is_file():
        raise UsageError(f"{proto_path} is not a file (give the .proto with --proto)")
    out = tempfile.mkdtemp(prefix="peergrid-pb-")
    try:
        code = protoc.main([
            "protoc",
            f"--proto_path={proto_path.parent}",
            f"--python_out={out}",
            proto_path.name,
        ])
        if code != 0:
            raise UsageError(f"protoc could not compile {proto_path} (exit {code})")
        module_name = proto_path.stem.replace("-", "_") + "_pb2"
        sys.path.insert(0, out)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# --- gRPC over HTTP/2 over one QUIC bidirectional stream -------------------------------------


@dataclass
class Call:
    """One gRPC call: an HTTP/2 stream and what has arrived on it."""

    stream_id: int
    method: str
    headers: dict | None = None
    trailers: dict | None = None
    buffer: bytearray = field(default_factory=bytearray)
    messages: asyncio.Queue = field(default_factory=asyncio.Queue)
    headers_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None

    def status(self) -> tuple[int, str]:
        """The call's gRPC status, from its trailers (or its trailers-only headers)."""
        source = self.trailers or self.headers or {}
        if "grpc-status" not in source:
            detail = self.error or "the call ended without a grpc-status"
            return 2, detail
        code = int(source["grpc-status"])
        message = urllib.parse.unquote(source.get("grpc-message", ""))
        return code, message


class GrpcOverQuic:
    """A gRPC client on one HTTP/2 connection carried by one QUIC bidirectional stream
    ("Transport": HTTP/2 with prior knowledge, no TLS inside the stream)."""

    def __init__(self, connection, send, recv):
        self.connection = connection
        self.send_stream = send
        self.recv_stream = recv
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.calls: dict[int, Call] = {}
        self.write_lock = asyncio.Lock()
        self.window_opened = asyncio.Event()
        self.closed_reason: str | None = None
        self.reader: asyncio.Task | None = None

    async def start(self):
        self.h2.initiate_connection()
        # Large receive windows: answers may hold up to 24 MiB; received data is acknowledged
        # as it arrives, so these only bound what is in flight.
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 << 20})
        self.h2.increment_flow_control_window(32 << 20)
        await self.flush()
        self.reader = asyncio.create_task(self.read_loop())

    async def flush(self):
        async with self.write_lock:
            data = self.h2.data_to_send()
            if data:
                try:
                    await self.send_stream.write_all(data)
                except Exception as error:  # noqa: BLE001 - iroh.IrohError: closed under us
                    # A worker that refuses the key closes the connection right after the
                    # handshake, and a write can fail before the close reason is known: wait
                    # for it (briefly) so the error says why.
                    try:
                        await asyncio.wait_for(self.connection.closed(), 2)
                    except Exception:  # noqa: BLE001 - timed out, or the binding's own error
                        pass
                    reason = (f"the stream failed ({error_text(error)}); "
                              f"{self.why_connection_closed()}")
                    self.fail_all(reason)
                    raise WorkerError(reason) from error

    def fail_all(self, reason: str):
        self.closed_reason = self.closed_reason or reason
        for call in self.calls.values():
            if not call.ended.is_set():
                call.error = call.error or reason
                call.headers_arrived.set()
                call.messages.put_nowait(None)
                call.ended.set()
        self.window_opened.set()

    def why_connection_closed(self) -> str:
        return close_hint(self.connection)

    async def read_loop(self):
        try:
            while True:
                data = await self.recv_stream.read(65536)
                if not data:
                    self.fail_all(f"the stream ended: {self.why_connection_closed()}")
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as error:
                    self.fail_all(f"HTTP/2 protocol error from the worker: {error}")
                    return
                for event in events:
                    self.handle(event)
                # PING acks, WINDOW_UPDATEs and SETTINGS acks go out at once ("HTTP/2 and
                # gRPC", Keepalive: a client MUST answer pings).
                await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a closed connection raises here
            self.fail_all(f"the stream failed ({error_text(error)}); {self.why_connection_closed()}")

    def handle(self, event):
        call = self.calls.get(getattr(event, "stream_id", None) or -1)
        if isinstance(event, h2.events.ResponseReceived) and call:
            call.headers = dict(event.headers)
            call.headers_arrived.set()
        elif isinstance(event, h2.events.TrailersReceived) and call:
            call.trailers = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if call:
                call.buffer.extend(event.data)
                self.parse_messages(call)
        elif isinstance(event, h2.events.StreamEnded) and call:
            if call.buffer and call.error is None:
                call.error = f"the stream ended inside a message ({len(call.buffer)} bytes left)"
            call.headers_arrived.set()
            call.messages.put_nowait(None)
            call.ended.set()
        elif isinstance(event, h2.events.StreamReset) and call:
            call.error = f"the worker reset the stream (HTTP/2 error {event.error_code})"
            call.headers_arrived.set()
            call.messages.put_nowait(None)
            call.ended.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_opened.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.fail_all(f"the worker sent GOAWAY (HTTP/2 error {event.error_code}, "
                          f"{event.additional_data!r})")

    def parse_messages(self, call: Call):
        """gRPC length-prefixed messages: a flag byte (0: uncompressed), a 4-byte big-endian
        length, the message. "HTTP/2 and gRPC": messages travel uncompressed."""
        while len(call.buffer) >= 5:
            flag = call.buffer[0]
            length = int.from_bytes(call.buffer[1:5], "big")
            if flag != 0:
                call.error = f"a compressed message (flag {flag}); the .proto says identity only"
                return
            if length > MAX_MESSAGE_BYTES:
                call.error = f"a {length}-byte message, over the 24 MiB cap"
                return
            if len(call.buffer) < 5 + length:
                return
            message = bytes(call.buffer[5:5 + length])
            del call.buffer[:5 + length]
            call.messages.put_nowait(message)

    async def open_call(self, method: str, timeout_s: float) -> Call:
        if self.closed_reason:
            raise WorkerError(self.closed_reason)
        stream_id = self.h2.get_next_available_stream_id()
        call = Call(stream_id=stream_id, method=method)
        self.calls[stream_id] = call
        self.h2.send_headers(stream_id, [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", f"/{SERVICE}/{method}"),
            (":authority", "peergrid.peer"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(timeout_s * 1000))}m"),
        ])
        await self.flush()
        return call

    async def send_message(self, call: Call, message: bytes, end: bool = False):
        if len(message) > MAX_MESSAGE_BYTES:
            raise UsageError(f"a {len(message)}-byte {call.method} message is over the 24 MiB cap")
        framed = memoryview(b"\x00" + len(message).to_bytes(4, "big") + message)
        while framed:
            if call.ended.is_set():
                raise WorkerError(f"{call.method} ended while sending: {call.error or call.status()}")
            self.window_opened.clear()
            window = min(self.h2.local_flow_control_window(call.stream_id),
                         self.h2.max_outbound_frame_size)
            if window <= 0:
                await self.window_opened.wait()
                continue
            self.h2.send_data(call.stream_id, bytes(framed[:window]))
            framed = framed[window:]
            await self.flush()
        if end:
            await self.end_requests(call)

    async def end_requests(self, call: Call):
        """Half-closes the call's request side."""
        if not call.ended.is_set():
            self.h2.end_stream(call.stream_id)
            await self.flush()

    async def next_message(self, call: Call) -> bytes | None:
        return await call.messages.get()

    async def finish(self, call: Call, timeout_s: float) -> tuple[int, str]:
        await asyncio.wait_for(call.ended.wait(), timeout_s)
        headers = call.headers or {}
        if headers.get(":status", "200") != "200":
            return 2, f"HTTP status {headers.get(':status')}"
        return call.status()

    async def unary(self, method: str, request: bytes, timeout_s: float) -> bytes:
        call = await self.open_call(method, timeout_s)
        await self.send_message(call, request, end=True)
        return await self.unary_answer(call, timeout_s)

    async def unary_answer(self, call: Call, timeout_s: float) -> bytes:
        try:
            code, message = await self.finish(call, timeout_s)
        except asyncio.TimeoutError:
            raise WorkerError(f"{call.method}: no answer within {timeout_s:.0f} s") from None
        source = call.trailers or call.headers or {}
        if "grpc-status" not in source and call.error:
            raise WorkerError(f"{call.method} failed: {call.error}")
        if code != 0:
            raise WorkerError(f"{call.method} refused: {STATUS_NAMES.get(code, code)}: {message}")
        answers = []
        while not call.messages.empty():
            item = call.messages.get_nowait()
            if item is not None:
                answers.append(item)
        if call.error or len(answers) != 1:
            raise WorkerError(f"{call.method}: {call.error or f'{len(answers)} answers to a unary call'}")
        return answers[0]

    async def close(self):
        if self.reader:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


# --- The task ------------------------------------------------------------------------------


@dataclass
class Blob:
    data: bytes
    hash: bytes
    what: str


@dataclass
class Task:
    signed: object  # SignedTask
    manifest: bytes
    program_digest: bytes
    blobs: dict[bytes, Blob]


def read_secret_key(path: Path | None) -> SigningKey:
    if path is None:
        return SigningKey.generate()
    try:
        text = path.read_text().strip()
        seed = bytes.fromhex(text)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the secret key {path}: {error}") from None
    if len(seed) != 32:
        raise UsageError(f"{path} does not hold a 32-byte key as 64 hex characters")
    return SigningKey(seed)


def build_task(pb, key: SigningKey, module: bytes, args, env, stdin: bytes, inputs, limits,
               ttl_s: int, job_id: str, task_id: str) -> Task:
    """"Signing rules", 1: encode a Program, put its bytes in a TaskManifest, sign
    "peergrid/task/v1" || M, send SignedTask { manifest = M, signature, submitter_key }."""
    if len(stdin) > MAX_STDIN_BYTES:
        raise UsageError(f"stdin is {len(stdin)} bytes, over the 4 MiB cap")
    for ident in (job_id, task_id):
        if len(ident.encode()) > MAX_ID_BYTES:
            raise UsageError(f"{ident!r} is longer than 128 bytes")
    blobs = {}
    module_hash = blake3_hash(module)
    blobs[module_hash] = Blob(module, module_hash, "the module")
    program = pb.Program(module_hash=module_hash, args=args, stdin=stdin)
    for name, value in env:
        program.env.add(name=name, value=value)
    names = set()
    for name, data in inputs:
        if name in names:
            raise UsageError(f"two input files are named {name!r}")
        names.add(name)
        file_hash = blake3_hash(data)
        program.files.add(name=name, hash=file_hash, size=len(data))
        blobs.setdefault(file_hash, Blob(data, file_hash, f"input file {name}"))
    program_bytes = program.SerializeToString()
    manifest = pb.TaskManifest(
        program=program_bytes,
        limits=pb.TaskLimits(**limits),
        job_id=job_id,
        task_id=task_id,
        # "Expiry and replay": required, whole UNIX seconds; the worker refuses it once its
        # clock reaches this time.
        expires_at_unix_s=int(time.time()) + ttl_s,
        nonce=secrets.token_bytes(16),
    ).SerializeToString()
    signature = key.sign(TASK_DOMAIN + manifest).signature
    signed = pb.SignedTask(
        manifest=manifest, signature=signature, submitter_key=bytes(key.verify_key)
    )
    return Task(signed, manifest, blake3_hash(program_bytes), blobs)


def tamper(pb, result, how: str | None):
    """Alters an answer as an on-path attacker would (testing aid)."""
    if how is None:
        return
    if how == "receipt":
        data = bytearray(result.receipt.receipt)
        data[len(data) // 2] ^= 0x01
        result.receipt.receipt = bytes(data)
    elif how == "signature":
        data = bytearray(result.receipt.signature)
        data[0] ^= 0x01
        result.receipt.signature = bytes(data)
    elif how == "stdout":
        result.stdout = (result.stdout[:-1] + bytes([result.stdout[-1] ^ 0x01])
                         if result.stdout else b"\x00")
    print(f"peergrid_client: tampered with the {how} before checking it", file=sys.stderr)


def verify_result(pb, result, manifest: bytes, proven_key: bytes):
    """"Signing rules", 2, and "Sizes and limits" (Receipts): returns the decoded Receipt, or
    raises ReceiptRejected naming the check that failed."""
    if not result.HasField("receipt"):
        raise ReceiptRejected("the result carries no signed receipt")
    signed = result.receipt
    receipt_bytes = bytes(signed.receipt)
    if len(receipt_bytes) > MAX_RECEIPT_BYTES:
        raise ReceiptRejected(f"the receipt is {len(receipt_bytes)} bytes, over the 4096-byte cap")
    if len(signed.signature) != 64:
        raise ReceiptRejected(f"the signature is {len(signed.signature)} bytes, not 64")
    # The signature is checked over exactly the bytes received, before decoding them. The key
    # is the one the connection proved: `worker_key` must equal it (checked right after), so
    # verifying against it is verifying against `worker_key`. libsodium's verification is
    # strict (small-order keys and R, non-canonical S and keys are refused).
    try:
        VerifyKey(proven_key).verify(RECEIPT_DOMAIN + receipt_bytes, bytes(signed.signature))
    except BadSignatureError:
        raise ReceiptRejected(
            "the receipt's signature does not verify against the key the worker's connection "
            "proved, over \"peergrid/receipt/v1\" || receipt") from None
    try:
        receipt = pb.Receipt.FromString(receipt_bytes)
    except Exception as error:  # noqa: BLE001 - DecodeError
        raise ReceiptRejected(f"the signed receipt does not decode: {error}") from None
    if receipt.worker_key != proven_key:
        raise ReceiptRejected(
            f"the receipt names worker key {receipt.worker_key.hex()}, not the key the "
            f"connection proved, {proven_key.hex()}")
    digest = blake3_hash(manifest)
    if receipt.task_digest != digest:
        raise ReceiptRejected(
            f"the receipt answers task {receipt.task_digest.hex()}, not the task sent "
            f"({digest.hex()})")
    for name, data, signed_hash in (("stdout", result.stdout, receipt.stdout_hash),
                                    ("stderr", result.stderr, receipt.stderr_hash)):
        if blake3_hash(data) != signed_hash:
            raise ReceiptRejected(
                f"BLAKE3 of the {len(data)} {name} bytes delivered is "
                f"{blake3_hash(data).hex()}, the receipt signs {signed_hash.hex()}")
    if receipt.outcome == pb.OUTCOME_UNSPECIFIED or receipt.outcome not in pb.Outcome.values():
        raise ReceiptRejected(f"the receipt's outcome {receipt.outcome} is not a result")
    for name in ("trap", "runtime_fingerprint"):
        size = len(getattr(receipt, name).encode())
        if size > MAX_RECEIPT_TEXT_BYTES:
            raise ReceiptRejected(f"the receipt's {name} is {size} bytes, over 1024")
    return receipt


# --- Talking to the worker -----------------------------------------------------------------


def error_text(error: Exception) -> str:
    """The message of an iroh error (uniffi errors print empty)."""
    for attribute in ("message", "debug_message"):
        try:
            text = getattr(error, attribute)()
            if text:
                return text
        except Exception:  # noqa: BLE001
            pass
    return str(error) or type(error).__name__


def close_hint(connection) -> str:
    """Why the worker closed the connection, with what its QUIC application error code means
    ("Admission", 0)."""
    try:
        reason = connection.close_reason()
    except Exception:  # noqa: BLE001 - the binding may not know yet
        reason = None
    if not reason:
        return "the connection is open"
    for code, meaning in QUIC_CLOSE_REASONS.items():
        if re.search(rf"\b(code:? ?|\()({code}|0x{code:x})\b", reason):
            return f"the worker closed the connection ({reason}): {meaning}"
    return f"the connection closed: {reason}"



def parse_worker(text: str) -> tuple[bytes, str]:
    key_hex, sep, addr = text.partition("@")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if not sep or len(key) != 32 or ":" not in addr:
        raise UsageError(f"{text!r} is not KEY@IP:PORT (the key as 64 hex digits)")
    return key, addr


async def upload_blob(pb, grpc: GrpcOverQuic, blob: Blob, timeout_s: float):
    """PutBlob: the first chunk names the hash and total size; chunks of at most 1 MiB; an
    empty blob is one chunk with no data."""
    if len(blob.data) > MAX_BLOB_BYTES:
        raise UsageError(f"{blob.what} is {len(blob.data)} bytes, over the 256 MiB blob cap")
    call = await grpc.open_call("PutBlob", timeout_s)
    offsets = range(0, max(len(blob.data), 1), MAX_CHUNK_BYTES)
    for index, offset in enumerate(offsets):
        chunk = pb.BlobChunk(data=blob.data[offset:offset + MAX_CHUNK_BYTES])
        if index == 0:
            chunk.hash = blob.hash
            chunk.total_size = len(blob.data)
        last = index == len(offsets) - 1
        try:
            await grpc.send_message(call, chunk.SerializeToString(), end=last)
        except WorkerError:
            break  # the worker ended the call early (e.g. it has the blob): read its status
    answer = pb.PutBlobResponse.FromString(await grpc.unary_answer(call, timeout_s))
    return answer.stored


async def run_with_execute(pb, grpc: GrpcOverQuic, task: Task, timeout_s: float, log):
    """"Execute": one request per attempt on one call; a FAILED_PRECONDITION refusal lists the
    missing blobs in `missing_blobs`: upload them and send the task again."""
    call = await grpc.open_call("Execute", timeout_s)
    # "HTTP/2 and gRPC": the worker sends its response headers as soon as Execute opens,
    # before it reads any request.
    try:
        await asyncio.wait_for(call.headers_arrived.wait(), 10)
    except asyncio.TimeoutError:
        raise WorkerError("Execute: no response headers within 10 s of opening the call") from None
    if call.ended.is_set():
        code, message = call.status()
        raise WorkerError(f"Execute ended at once: {STATUS_NAMES.get(code, code)}: {message}")
    for request_id in range(3):
        request = pb.ExecuteRequest(request_id=request_id, task=task.signed)
        await grpc.send_message(call, request.SerializeToString())
        raw = await asyncio.wait_for(grpc.next_message(call), timeout_s)
        if raw is None:
            code, message = call.status()
            raise WorkerError(f"Execute ended before answering: {call.error or ''} "
                              f"{STATUS_NAMES.get(code, code)}: {message}".strip())
        answer = pb.ExecuteResponse.FromString(raw)
        if answer.request_id != request_id:
            raise WorkerError(f"Execute answered request {answer.request_id}, "
                              f"only {request_id} was open")
        if answer.WhichOneof("answer") == "result":
            # Half-close: the worker ends the call with OK once nothing is in flight.
            await grpc.end_requests(call)
            try:
                code, message = await grpc.finish(call, 10)
                if code != 0:
                    log(f"Execute ended with {STATUS_NAMES.get(code, code)}: {message}")
            except asyncio.TimeoutError:
                log("Execute: the worker did not end the call within 10 s of the half-close")
            return answer.result
        refusal = answer.refused
        name = STATUS_NAMES.get(refusal.code, refusal.code)
        if refusal.code != FAILED_PRECONDITION or not refusal.missing_blobs:
            raise WorkerError(f"the worker refused the task: {name}: {refusal.message}")
        missing = list(refusal.missing_blobs)
        unknown = [h.hex() for h in missing if h not in task.blobs]
        if unknown:
            raise WorkerError(f"the worker asks for blobs this task does not use: {unknown}")
        for blob_hash in missing:
            blob = task.blobs[blob_hash]
            stored = await upload_blob(pb, grpc, blob, timeout_s)
            log(f"uploaded {blob.what} ({len(blob.data)} bytes, {blob_hash.hex()[:16]}…, "
                f"{'stored' if stored else 'already there'})")
    raise WorkerError("the worker still lacks blobs after 2 uploads")


async def run_with_run(pb, grpc: GrpcOverQuic, task: Task, timeout_s: float, log):
    """MissingBlobs, PutBlob what is missing, then the unary `Run`."""
    asked = pb.MissingBlobsRequest(hashes=list(task.blobs))
    missing = pb.MissingBlobsResponse.FromString(
        await grpc.unary("MissingBlobs", asked.SerializeToString(), 30)).missing
    for blob_hash in missing:
        if blob_hash not in task.blobs:
            raise WorkerError(f"MissingBlobs named a hash not asked for: {blob_hash.hex()}")
        stored = await upload_blob(pb, grpc, task.blobs[blob_hash], timeout_s)
        log(f"uploaded {task.blobs[blob_hash].what} ({'stored' if stored else 'already there'})")
    raw = await grpc.unary("Run", task.signed.SerializeToString(), timeout_s)
    return pb.TaskResult.FromString(raw)


async def submit(args, pb, task: Task, key: SigningKey, log):
    worker_key, worker_addr = parse_worker(args.worker)
    # "Transport": our endpoint id is our Ed25519 key, the key that signed the task. No relay:
    # the worker is dialled at its direct address.
    endpoint = await iroh.Endpoint.bind(iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr=args.bind,
        secret_key=bytes(key),  # the 32-byte seed
        relay_mode=iroh.RelayMode.disabled(),
        alpns=[],
    ))
    try:
        if endpoint.id().to_bytes() != bytes(key.verify_key):
            raise WorkerError("the iroh endpoint id is not the Ed25519 public key of the secret "
                              "key it was given")
        target = iroh.EndpointAddr(iroh.EndpointId.from_bytes(worker_key), None, [worker_addr])
        try:
            connection = await asyncio.wait_for(endpoint.connect(target, ALPN), 10)
        except asyncio.TimeoutError:
            raise WorkerError(f"no QUIC handshake with {args.worker} within 10 s") from None
        except Exception as error:  # noqa: BLE001 - iroh.IrohError
            raise WorkerError(f"cannot connect to {args.worker}: {error_text(error)}") from None
        # The key the worker's connection proved (TLS 1.3 with raw public keys).
        proven_key = connection.remote_id().to_bytes()
        if proven_key != worker_key:
            raise WorkerError(f"the worker proved key {proven_key.hex()}, not {worker_key.hex()}")
        if connection.alpn() != ALPN:
            raise WorkerError(f"the connection's ALPN is {connection.alpn()!r}, not {ALPN!r}")
        try:
            stream = await connection.open_bi()
        except Exception as error:  # noqa: BLE001 - iroh.IrohError
            raise WorkerError(f"cannot open a stream: {error_text(error)}; "
                              f"{close_hint(connection)}") from None
        grpc = GrpcOverQuic(connection, stream.send(), stream.recv())
        await grpc.start()
        try:
            info = pb.NodeInfo.FromString(
                await grpc.unary("Info", pb.InfoRequest().SerializeToString(), 30))
            if info.worker_key != proven_key:
                raise WorkerError(f"Info says worker key {info.worker_key.hex()}, the connection "
                                  f"proved {proven_key.hex()}")
            log(f"worker {proven_key.hex()[:12]} runtime {info.runtime_fingerprint} "
                f"slots {info.slots} version {info.version}")
            runner = run_with_execute if args.rpc == "execute" else run_with_run
            result = await runner(pb, grpc, task, args.deadline_s, log)
        finally:
            await grpc.close()
        tamper(pb, result, args.tamper)
        receipt = verify_result(pb, result, task.manifest, proven_key)
        connection.close(0, b"done")
        return result, receipt, proven_key
    finally:
        await endpoint.close()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="peergrid_client.py",
        description="Sign one task, run it on a peergrid worker, verify the signed receipt from "
                    "the .proto's rules, and print the verified output.")
    here = Path(__file__).resolve().parent
    parser.add_argument("--worker", required=True, help="KEY@IP:PORT, as the worker prints it")
    parser.add_argument("--key", type=Path, help="secret key file (64 hex characters)")
    parser.add_argument("--proto", type=Path, default=here.parent.parent / "proto" / "peergrid.proto")
    parser.add_argument("--stdin", type=Path, help="file whose bytes are the task's stdin")
    parser.add_argument("--input", type=Path, action="append", default=[],
                        help="file the task reads as /input/<file name>; repeat for several")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE; repeat")
    parser.add_argument("--fuel", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--timeout-s", type=int, default=0)
    parser.add_argument("--ttl-s", type=int, default=300,
                        help="seconds after which the worker must refuse the task")
    parser.add_argument("--deadline-s", type=float, default=120,
                        help="how long to wait for the answer")
    parser.add_argument("--rpc", choices=["execute", "run"], default="execute")
    parser.add_argument("--bind", default="127.0.0.1:0", help="local UDP address")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tamper", choices=["receipt", "signature", "stdout"],
                        help="testing aid: alter the answer before checking it")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("module", type=Path)
    parser.add_argument("args", nargs="*", help="arguments for the task (after --)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda line: None) if args.quiet else (
        lambda line: print(f"peergrid_client: {line}", file=sys.stderr))
    try:
        pb = load_messages(args.proto)
        key = read_secret_key(args.key)
        if args.key is None:
            log(f"made a fresh key {bytes(key.verify_key).hex()}")
        try:
            module = args.module.read_bytes()
            stdin = args.stdin.read_bytes() if args.stdin else b""
            inputs = [(path.name, path.read_bytes()) for path in args.input]
        except OSError as error:
            raise UsageError(str(error)) from None
        env = []
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name or "\0" in item:
                raise UsageError(f"--env {item!r} is not NAME=VALUE")
            env.append((name, value))
        limits = {"fuel": args.fuel, "memory_bytes": args.memory_mb << 20,
                  "timeout_ms": args.timeout_s * 1000}
        task = build_task(pb, key, module, args.args, env, stdin, inputs, limits, args.ttl_s,
                          "python-interop", args.module.stem)
        log(f"task {blake3_hash(task.manifest).hex()[:16]}… program "
            f"{task.program_digest.hex()[:16]}…")
        result, receipt, proven_key = asyncio.run(asyncio.wait_for(
            submit(args, pb, task, key, log), args.deadline_s + 60))
    except UsageError as error:
        print(f"peergrid_client: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ReceiptRejected as error:
        print(f"peergrid_client: receipt REJECTED: {error}", file=sys.stderr)
        return EXIT_BAD_RECEIPT
    except (WorkerError, asyncio.TimeoutError) as error:
        print(f"peergrid_client: {error or 'timed out'}", file=sys.stderr)
        return EXIT_WORKER
    outcome = pb.Outcome.Name(receipt.outcome).removeprefix("OUTCOME_").lower()
    if args.json:
        print(json.dumps({
            "verified": True,
            "outcome": outcome,
            "exit_code": receipt.exit_code,
            "trap": receipt.trap,
            "fuel_used": receipt.fuel_used,
            "runtime_fingerprint": receipt.runtime_fingerprint,
            "worker_key": proven_key.hex(),
            "task_digest": receipt.task_digest.hex(),
            "program_digest": task.program_digest.hex(),
            "stdout": result.stdout.decode("utf-8", "replace"),
            "stderr": result.stderr.decode("utf-8", "replace"),
            "stdout_hash": receipt.stdout_hash.hex(),
        }, sort_keys=True))
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
    log(f"verified receipt: {outcome} {receipt.exit_code} · fuel {receipt.fuel_used} · "
        f"worker {proven_key.hex()[:12]} · task {receipt.task_digest.hex()[:16]}… · "
        f"stdout {receipt.stdout_hash.hex()[:8]}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
