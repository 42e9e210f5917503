"""The floor for blob uploads over Python gRPC on this machine: Puts that nobody stores.

Run as ``python -P putfloor.py serve SOCKET`` (``-P``: the ``grpc`` section module beside this file
must not shadow the grpc package) for a grpcio server configured as ``tvix-store
daemon`` is (a sync server on the same elastic thread pool, the same message limit) whose BlobService/Put
reads the client's stream and answers at once: no hashing, no chunking, no storage. Run as
``python -P putfloor.py send SOCKET DIR`` for a client that sends every regular file under DIR as
one Put (files over 1 MiB as a stream of 1 MiB messages), keeping as many calls in flight as
``tvix-store import`` does, and waits for every answer. The grpc section times ``send`` against
``serve`` for the stdlib tree: what an import through the daemon costs in gRPC calls alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

PIECE = 1024 * 1024
IN_FLIGHT = 64  # the upload window of our gRPC blob client
SERVICE = "tvix.castore.v1.BlobService"


def _raw(message: bytes) -> bytes:
    return message


def serve(sock: str) -> int:
    import grpc

    from tvix_castore.grpc.channel import MAX_MESSAGE
    from tvix_castore.grpc.pool import ElasticThreadPool
    from tvix_store.server import MAX_CALLS, MAX_THREADS

    def put(requests: Iterator[bytes], context: object) -> bytes:
        for _ in requests:
            pass
        return b""  # an empty PutBlobResponse

    server = grpc.server(
        ElasticThreadPool(max_workers=MAX_THREADS),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
        maximum_concurrent_rpcs=MAX_CALLS,
    )
    handler = grpc.stream_unary_rpc_method_handler(put, request_deserializer=_raw, response_serializer=_raw)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Put": handler}),))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(1).wait()
    return 0


def send(sock: str, tree: str) -> int:
    import grpc

    from tvix_castore.grpc.blob_chunk import encode

    channel = grpc.insecure_channel(f"unix:{sock}")
    put_one = channel.unary_unary(f"/{SERVICE}/Put", request_serializer=_raw, response_deserializer=_raw)
    put_stream = channel.stream_unary(f"/{SERVICE}/Put", request_serializer=_raw, response_deserializer=_raw)
    slots = threading.BoundedSemaphore(IN_FLIGHT)
    calls = []
    for path in sorted(Path(tree).rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        pieces = [data[i : i + PIECE] for i in range(0, len(data), PIECE)] or [b""]
        messages = [encode(p) for p in pieces]
        slots.acquire()
        call = put_one.future(messages[0]) if len(messages) == 1 else put_stream.future(iter(messages))
        call.add_done_callback(lambda _: slots.release())
        calls.append(call)
    for call in calls:
        call.result()
    channel.close()
    return 0


def wait_for_socket(sock: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Wait until proc, a server, has created its unix socket (and a moment more to listen)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2]))
    sys.exit(send(sys.argv[2], sys.argv[3]))
