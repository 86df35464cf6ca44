"""Bad input sent by a grpc-core client (Python's grpcio), as tests/tests/grpc_core.rs asks.

grpc-core refuses a status whose metadata exceeds its limit (16 KiB by default) with
RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead of the status the server
meant. Each case here sends a value far over a bound; the test checks that this client
receives the server's INVALID_ARGUMENT with its message. Requests are encoded by hand
(protobuf wire format), so nothing but grpcio is needed.

Usage: python bad_input.py HOST:PORT   -> one JSON line per case on stdout.
"""

import json
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (string, bytes, message)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def uint(number, value):
    return varint(number << 3) + varint(value)


def digest(hash_hex, size):
    return field(1, hash_hex) + uint(2, size)


GOOD_HASH = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def stage(name, depends_on=()):
    return field(1, name) + b"".join(field(2, d) for d in depends_on)


def graph(stages):
    return b"".join(field(1, s) for s in stages)


def cases():
    ns = field(1, "prod")
    yield "refs get: 20,000-byte ref name", "/stagecache.v1.Refs/Get", ns + field(2, "a" * 20_000)
    yield "refs get: 1 MB namespace", "/stagecache.v1.Refs/Get", field(1, "n" * 1_000_000) + field(2, "bar/1")
    yield (
        "manifests get: 1 MB digest hash",
        "/stagecache.v1.Manifests/Get",
        ns + field(2, digest("f" * 1_000_000, 1)),
    )
    n = 1_000
    cycle = [stage(f"stage-{i:04}", [f"stage-{(i + 1) % n:04}"]) for i in range(n)]
    yield (
        "ledger plan: a 1,000-stage cycle",
        "/stagecache.v1.Ledger/Plan",
        ns + field(2, digest(GOOD_HASH, 1)) + field(3, graph(cycle)),
    )
    many = [stage(f"s{i}") for i in range(100_000)]
    yield (
        "ledger plan: 100,000 stages",
        "/stagecache.v1.Ledger/Plan",
        ns + field(2, digest(GOOD_HASH, 1)) + field(3, graph(many)),
    )
    yield (
        "cas find missing: 100,001 digests",
        "/stagecache.v1.Cas/FindMissing",
        ns + b"".join(field(2, digest(GOOD_HASH, i)) for i in range(100_001)),
    )


def main():
    target = sys.argv[1]
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        for name, method, request in cases():
            call = channel.unary_unary(
                method,
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            try:
                call(request, timeout=60)
                outcome = {"case": name, "code": "OK", "details": ""}
            except grpc.RpcError as e:
                outcome = {"case": name, "code": e.code().name, "details": e.details() or ""}
            print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
