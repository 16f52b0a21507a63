#!/usr/bin/env python3
"""Writes the fuzz seed corpora (fuzz/seeds/<target>/*): the inputs of
issue 11 and a few valid inputs of each format, so the fuzzers start past
the headers. The files are committed; rerun this after changing it:

    python3 fuzz/seeds/generate.py

A crash the fuzzers find is added by hand (see the README's "Fuzzing").
Formats: see each target's docs (tiercache_core::fuzz_targets,
tiercache_tower::fuzz_targets, fuzz/src/lib.rs).
"""

import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SIGNING_KEY = b"tiercache-fuzz-signing-key"  # tiercache_core::fuzz_targets::SIGNING_KEY
U64_MAX = 2**64 - 1


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- postcard (the bus message body) -----------------------------------------


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


def pc_str(s):
    b = s.encode()
    return varint(len(b)) + b


def invalidation(origin, namespace, keys, tags, created, seq, source_time_ms):
    return (
        varint(origin)
        + pc_str(namespace)
        + varint(len(keys))
        + b"".join(pc_str(k) for k in keys)
        + varint(len(tags))
        + b"".join(pc_str(t) for t in tags)
        + bytes([1 if created else 0])
        + varint(seq)
        + varint(source_time_ms)
    )


def clear_note(hard, epoch, floor):
    """A ClearNote (postcard): hard, epoch, floor; after the body, format 2."""
    return bytes([1 if hard else 0]) + varint(epoch) + varint(floor)


def message(body, signed=False, clear=None):
    version = b"\x01" if clear is None else b"\x02"
    head = b"TCI" + version + bytes([1 if signed else 0]) + body + (clear or b"")
    if signed:
        head += hmac.new(SIGNING_KEY, head, hashlib.sha256).digest()
    return head


# --- bus_message ---------------------------------------------------------------

sample = invalidation(7, "products", ["1", "2"], ["category:books"], True, 42, 1_700_000_000_000)
write("bus_message", "unsigned", message(sample))
write("bus_message", "signed", message(sample, signed=True))
write("bus_message", "body-only", sample)
write(
    "bus_message",
    "seq-u64-max",
    message(invalidation(9, "products", ["1"], [], False, U64_MAX, 0)),
)
write("bus_message", "seq-1", message(invalidation(9, "products", ["1"], [], False, 1, 0)))
write("bus_message", "future-version", b"TCI\x09\x00" + sample)
write("bus_message", "foreign", b"hello world")
# Origin heartbeats and farewells: no keys, no tags, the last seq.
write("bus_message", "heartbeat", message(invalidation(9, "products", [], [], False, 7, 0)))
write("bus_message", "farewell", message(invalidation(9, "products", [], [], True, 7, 0)))
# Clears (format 2): hard and soft, signed; and what a decoder refuses: a
# clear naming keys, a floor past its epoch, a format-2 message without its
# clear, huge epochs.
clear_body = invalidation(9, "products", [], [], False, 8, 1_700_000_000_000)
write("bus_message", "clear-hard", message(clear_body, clear=clear_note(True, 5, 5)))
write("bus_message", "clear-soft-signed", message(clear_body, signed=True, clear=clear_note(False, 6, 5)))
write("bus_message", "clear-with-keys", message(sample, clear=clear_note(True, 5, 5)))
write("bus_message", "clear-floor-past-epoch", message(clear_body, clear=clear_note(False, 3, 4)))
write("bus_message", "clear-missing", b"TCI\x02\x00" + clear_body)
write("bus_message", "clear-u64-max", message(clear_body, clear=clear_note(True, U64_MAX, U64_MAX)))

# --- bus_listener: chunks of (length byte, bytes) -----------------------------


def chunks(*parts):
    out = bytearray()
    for p in parts:
        assert len(p) < 256
        out.append(len(p))
        out += p
    return bytes(out)


def fz(seq, origin=9, keys=("probe",), tags=()):
    return message(invalidation(origin, "fz", list(keys), list(tags), False, seq, 0))


write("bus_listener", "seq-u64-max-then-1", chunks(fz(U64_MAX), fz(1)))
write("bus_listener", "gap", chunks(fz(1, keys=("a",)), fz(5, keys=("b",)), fz(4)))
write("bus_listener", "restart", chunks(fz(5000), fz(1), fz(2)))
# A heartbeat that reveals a gap, the same heartbeat again, then the origin.
write("bus_listener", "heartbeat-gap-farewell", chunks(fz(1), fz(4, keys=()), fz(4, keys=()), fz(5)))
# A structured chunk: odd first byte (origin), then seq (8 bytes LE), words.
write(
    "bus_listener",
    "structured",
    chunks(b"\x03" + struct.pack("<Q", U64_MAX) + b"probe t1 t2", b"\x03" + struct.pack("<Q", 1) + b"x"),
)
write("bus_listener", "garbage-then-other-namespace", chunks(b"hello", message(sample)))
# A forged clear with the largest epochs, then the probe: the listener
# clears and goes on.
write(
    "bus_listener",
    "forged-clear-then-probe",
    chunks(
        message(invalidation(9, "fz", [], [], False, 1, 0), clear=clear_note(True, U64_MAX, U64_MAX)),
        fz(2),
    ),
)
# Source times a receiver clamps before recording (never later than now):
# far future, the epoch's first millisecond, and unknown (0).
write(
    "bus_listener",
    "source-times",
    chunks(
        message(invalidation(9, "fz", ["probe"], ["t"], False, 1, U64_MAX)),
        message(invalidation(9, "fz", ["probe"], [], False, 2, 1)),
        message(invalidation(9, "fz", ["probe"], [], True, 3, 0)),
    ),
)

# --- envelope ------------------------------------------------------------------


def envelope(negative, times, tags, payload, lz4_raw_len=None, epoch=None):
    """Format 1, or format 2 (a clear epoch after the times) with `epoch`."""
    flags = (1 if negative else 0) | (2 if lz4_raw_len is not None else 0)
    version = b"\x01" if epoch is None else b"\x02"
    out = b"TC" + version + bytes([flags]) + struct.pack("<4Q", *times)
    if epoch is not None:
        out += struct.pack("<Q", epoch)
    out += struct.pack("<H", len(tags))
    for t, v in tags:
        tb = t.encode()
        out += struct.pack("<H", len(tb)) + tb + struct.pack("<Q", v)
    if lz4_raw_len is not None:
        out += struct.pack("<I", lz4_raw_len)
    return out + payload


# Issue 11, case 4: 42 bytes whose size prefix claims 256 MiB.
write("envelope", "lz4-bomb", bytes.fromhex("5443010200" + "00" * 33 + "00000010"))
tags = [("products", 9), ("category:café", 3)]
write("envelope", "stale-u64-max", envelope(False, (1, 2, 3, U64_MAX), tags, b"hello"))
write("envelope", "negative", envelope(True, (1, 2, 3, 4), [], b""))
# "a" * 2000 as an lz4 block: a literal, a match (offset 1) of 1994, then
# the last five bytes as literals.
block = bytes([0x1F]) + b"a" + b"\x01\x00" + bytes([255] * 7 + [190]) + bytes([0x50]) + b"aaaaa"
write("envelope", "lz4", envelope(False, (1, 2, 3, 4), [("t", 1)], block, lz4_raw_len=2000))
# Format 2: a clear epoch; the largest one; cut inside the epoch.
write("envelope", "epoch", envelope(False, (1, 2, 3, 4), tags, b"hello", epoch=7))
write("envelope", "epoch-u64-max", envelope(True, (1, 2, 3, 4), [], b"", epoch=U64_MAX))
write("envelope", "epoch-cut", envelope(False, (1, 2, 3, 4), [], b"", epoch=7)[:4 + 32 + 4])

# --- keys: max_key_len (u16 LE), namespace length, namespace, key \n key ----------


def keys(max_len, ns, k1, k2=None):
    out = struct.pack("<H", max_len) + bytes([len(ns.encode())]) + ns.encode() + k1.encode()
    if k2 is not None:
        out += b"\n" + k2.encode()
    return out


write("keys", "long-L", keys(250, "ns", "L" * 300))
write("keys", "forged-hash", keys(250, "ns", "#76218cfe33fa24c1f4a67c79e15962e3", "L" * 300))
write("keys", "escape-edge", keys(48, "ns", "#" + "k" * 44, "#" + "k" * 43))
write("keys", "short", keys(250, "products", "42", "##x"))
write("keys", "utf8", keys(64, "pages", "GET /café?a=1 |accept=*/*", "é" * 40))

# --- cached_response -------------------------------------------------------------


def put_bytes(b):
    return varint(len(b)) + b


def cached(status, etag, fields, body, meta=None, tags=(), variants=()):
    """Format 1 without `meta`; format 2 (ages, tags, variants) with it."""
    if meta is None:
        out = b"\x01" + struct.pack(">H", status)
    else:
        initial_age, lifetime, stale_if_error, origin_etag = meta
        flags = (1 if origin_etag else 0) | (2 if variants else 0)
        out = b"\x02" + struct.pack(">H", status)
        out += varint(initial_age) + varint(lifetime) + varint(stale_if_error) + bytes([flags])
        out += varint(len(tags)) + b"".join(put_bytes(t.encode()) for t in tags)
        if variants:
            out += varint(len(variants)) + b"".join(put_bytes(v) for v in variants)
    out += put_bytes(etag) + varint(len(fields))
    for n, v in fields:
        out += put_bytes(n) + put_bytes(v)
    return out + put_bytes(body)


# Issue 11, case 2: 32,769 header fields claimed (each an empty name).
write("cached_response", "many-fields", bytes.fromhex("0100c800818002") + b"\x00" * 32_769)
write(
    "cached_response",
    "valid",
    cached(
        200,
        b'"abc"',
        [
            (b"content-type", b"application/json"),
            (b"x-multi", b"a"),
            (b"x-multi", b"b"),
            (b"etag", b'"abc"'),
            (b"x-cache", b"hit"),
            (b"age", b"0"),
            (b"content-length", b"8"),
        ],
        b'{"id":1}',
    ),
)
write("cached_response", "negative-404", cached(404, b'"0"', [(b"age", b"0")], b""))
write(
    "cached_response",
    "valid-v2",
    cached(
        200,
        b'"v1"',
        [
            (b"content-type", b"text/plain"),
            (b"cache-control", b"max-age=60, stale-while-revalidate=30"),
            (b"etag", b'"v1"'),
            (b"x-cache", b"hit"),
            (b"age", b"0"),
            (b"cache-status", b"upstream; hit, tiercache; hit"),
        ],
        b"hello",
        meta=(7, 60, U64_MAX, True),
        tags=["products", "category:café"],
    ),
)
write(
    "cached_response",
    "variants-marker",
    cached(200, b'""', [], b"", meta=(0, 0, 0, False), variants=[b"accept-language", b"cookie"]),
)

# --- response_headers: "STATUS\nname: value\n...\n\nbody" ---------------------------

resp = {
    "max-age-99999999999": "200\ncache-control: max-age=99999999999\n\nbody",
    "max-age-u64-max": "200\ncache-control: max-age=18446744073709551615\n\nbody",
    "many-values": "200\n*32769 x-many: v\n\n",
    "many-tags-values": "200\n*32769 x-cache-tags: a\n\n",
    "many-cache-control": "200\n*32769 cache-control: max-age=5\n\n",
    "tags-cafe": "200\nx-cache-tags: products category:café\n\n{}",
    "tag-65536": "200\nx-cache-tags: " + "t" * 65_536 + "\n\n",
    "rich": "200\ncache-control: public, max-age=60, s-maxage=\"10\"\nvary: Accept\n"
    "connection: x-hop, keep-alive\nx-hop: 1\nkeep-alive: timeout=5\nset-cookie: a=b\n"
    'etag: "abc"\nx-cache-tags: caf%C3%A9 100%25 products\ncontent-type: application/json\n'
    "\n"
    '{"id":1}',
    "stored-rich": "203\ncache-control: max-age=60, S-MAXAGE=10\nvary: accept\n"
    "connection: x-hop\nx-hop: 1\nage: 7\nx-cache: stale\nx-cache-tags: a, b c\n"
    "x-cache-tags: a,d\ncontent-length: 3\n\nabc",
    "negative": "404\ncache-control: max-age=5\n\n",
    "no-store": "200\ncache-control: no-store\ncache-control: max-age=60\n\n",
    "vary-star": "200\nvary: *\n\n",
    "bad-escape": "200\nx-cache-tags: a%zz\n\n",
    "pragma": "200\npragma: no-cache\n\n",
    "targeted": "200\ncache-control: no-store\ntiercache-cache-control: max-age=600\n"
    "cdn-cache-control: private\n\nt",
    "heuristic": "200\ndate: Sun, 09 Sep 2001 01:46:40 GMT\nlast-modified: Sat, 09 Sep 2000 01:46:40 GMT\n\nh",
    "dates-differ": "200\nexpires: Thu, 01 Jan 2099 00:00:00 GMT\nexpires: 0\ndate: x\n\n",
    "swr-negative": "404\ncache-control: max-age=600, stale-while-revalidate=60\n\n",
    "age-huge": "200\nage: 18446744073709551616, 1\ncache-control: s-maxage=18446744073709551615\n\n",
}
for name, text in resp.items():
    write("response_headers", name, text)

# --- request_headers: "METHOD URI\nname: value\n..." --------------------------------

params = "&".join(f"p{i:02}=1" for i in reversed(range(40)))
req = {
    "products": "GET /products/1?b=2&a=1\naccept: application/json\naccept-language: en\n"
    'if-none-match: "x", W/"abc"\ncache-control: no-cache\npragma: no-cache',
    "escapes": b"HEAD /x\naccept: a|b\naccept: 100%\naccept: caf\xe9\naccept: \tx",
    "long-query": f"GET /q?{params}&&",
    "star": "GET /p\nif-none-match: *",
    "absolute": "GET http://example.com/a?b=1&a=2\nauthorization: Bearer x",
    "many-values": "GET /p\n*32769 accept: v",
    "conditionals-twice": 'GET /p\nif-none-match: "a"\nif-none-match: "b"\nrange: bytes=0-1\n'
    "range: bytes=2-3\nif-range: \"a\"\nif-modified-since: Tue, 01 Dec 2026 00:00:00 GMT",
}
for name, text in req.items():
    write("request_headers", name, text)

# --- http_layer: "REQUEST\n\nRESPONSE\n\nBODY" ----------------------------------------

ok = "200\ncache-control: max-age=60\nx-cache-tags: products product:1\ncontent-type: application/json"
layer = {
    "stored": f"GET /products/1\naccept: application/json\n\n{ok}\n\n" '{"id":1}',
    "stored-head": f"HEAD /products/1\n\n{ok}\n\n" '{"id":1}',
    "not-modified": 'GET /p\nif-none-match: "v1"\n\n200\netag: "v1"\n\nbody',
    "negative": "GET /missing\n\n404\n\nnot found",
    "server-error": "GET /p\n\n500\ncache-control: max-age=60\n\noops",
    "post": f"POST /products\n\n{ok}\n\ncreated",
    "authorized": f"GET /me\nauthorization: Bearer x\n\n{ok}\n\nme",
    "request-no-cache": f"GET /p\ncache-control: no-cache\n\n{ok}\n\nbody",
    "max-age-99999999999": "GET /p\n\n200\ncache-control: max-age=99999999999\n\nbody",
    "max-age-u64-max": "GET /p\n\n200\ncache-control: max-age=18446744073709551615\n\nbody",
    "s-maxage-zero": "GET /p\n\n200\ncache-control: max-age=60, s-maxage=0\n\nbody",
    "tags-cafe": "GET /p\n\n200\nx-cache-tags: products category:café\n\n{}",
    "tag-65536": "GET /p\n\n200\nx-cache-tags: " + "t" * 65_536 + "\n\nbody",
    "many-values": "GET /p\n\n200\n*32769 x-many: v\n\nbody",
    "set-cookie": "GET /p\n\n200\nset-cookie: a=b\n\nbody",
    "vary": "GET /p\naccept: text/html\n\n200\nvary: Accept, Cookie\n\nbody",
    "hop-by-hop": "GET /p\n\n200\nconnection: x-hop\nx-hop: 1\ntransfer-encoding: chunked\netag: \"e\"\n\nbody",
    "large-body": "GET /big\n\n200\n\n" + "b" * 20_000,
    "sorted-query": "GET /q?b=2&a=1&&c\naccept: a|b\n\n200\n\nq",
    "range": "GET /r\nrange: bytes=2-5\n\n200\ncache-control: max-age=60\n\n0123456789",
    "range-unsatisfiable": "GET /r\nrange: bytes=20-\n\n200\n\n0123456789",
    "if-modified-since": "GET /p\nif-modified-since: Thu, 01 Jan 2099 00:00:00 GMT\n\n"
    "200\nlast-modified: Sun, 09 Sep 2001 01:46:40 GMT\n\nbody",
    "vary-variants": "GET /v\naccept-language: en\ncookie: a=1\n\n200\nvary: Accept-Language, Cookie\n\nv",
    "swr": "GET /s\n\n200\ncache-control: max-age=60, stale-while-revalidate=30, stale-if-error=600\n\ns",
    "must-revalidate": "GET /m\n\n200\ncache-control: max-age=60, must-revalidate\nage: 30\n\nm",
    "expires-past": "GET /e\n\n200\nexpires: Sun, 09 Sep 2001 01:46:40 GMT\n\ne",
    "expires-future": "GET /e\n\n200\ndate: Sun, 09 Sep 2001 01:46:40 GMT\nexpires: Thu, 01 Jan 2099 00:00:00 GMT\n\ne",
    "cdn-cache-control": "GET /c\n\n200\ncache-control: no-store\ncdn-cache-control: max-age=60\n\nc",
    "cache-status-upstream": "GET /u\n\n200\ncache-status: upstream; hit\nage: 99999999999999999999\n\nu",
    "partial": "GET /p\n\n206\ncontent-range: bytes 0-1/10\n\n01",
}
for name, text in layer.items():
    write("http_layer", name, text)

# --- test_decoding: one line -------------------------------------------------------

lines = {
    "issue-commit-1": "COMMIT 7 (at 7-7-4 3:5:9+9999999999999999)",
    "issue-commit-2": "COMMIT 7 (at 7-5-2 9844679083:9:4+6)",
    "issue-commit-3": "COMMIT(at 2-1-8 9:7:9+5:223372036854775807)",
    "begin": "BEGIN 529",
    "insert": "table public.products: INSERT: id[bigint]:1 name[text]:'x'",
    "commit": "COMMIT 529 (at 2024-01-02 03:04:05.123456+00)",
    "update": "table public.products: UPDATE: old-key: id[bigint]:1 category[text]:'a' "
    "new-tuple: id[bigint]:1 category[text]:'it''s' tags[text[]]:'{a,b}' big[text]:unchanged-toast-datum",
    "delete": 'table "my schema"."Products": DELETE: id[bigint]:1 flag[bit(4)]:B\'0101\' n[text]:null',
    "truncate": "table public.a, public.b: TRUNCATE: (no-flags)",
    "message": 'message: transactional: 1 prefix: tiercache, sz: 31 content:{"namespace":"products"}',
    "timestamp-max": "COMMIT 1 (at 294247-01-10 04:00:54.775807+00)",
    "timestamp-offset": "COMMIT 1 (at 2024-05-01 12:34:56.123456+15:59:59)",
}
for name, text in lines.items():
    write("test_decoding", name, text)

# --- logical: rows "LSN\tline", one per line ----------------------------------------

explicit = '{"namespace":"p","keys":["1"],"tags":["t"]}'
logical = {
    "transaction": "0/1\tBEGIN 529\n"
    "0/2\ttable public.products: INSERT: id[bigint]:1 category[text]:'books'\n"
    "0/3\tCOMMIT 529 (at 2024-01-02 03:04:05.123456+00)",
    "lsn-max-heartbeat": "FFFFFFFF/FFFFFFFF\tmessage: transactional: 0 prefix: tiercache-heartbeat, sz: 0 content:",
    "lsn-max-commit": "0/1\tBEGIN 1\n0/2\ttable public.products: DELETE: id[bigint]:2\nFFFFFFFF/FFFFFFFF\tCOMMIT 1",
    "explicit": f"0/4\tBEGIN 2\n0/5\tmessage: transactional: 1 prefix: tiercache, sz: {len(explicit)} content:{explicit}\n"
    "0/6\tCOMMIT 2",
    "explicit-now": f"0/7\tmessage: transactional: 0 prefix: tiercache, sz: {len(explicit)} content:{explicit}",
    "audit-long-key": "1/0\tBEGIN 3\n1/1\ttable public.audit: INSERT: id[bigint]:1 name[text]:'"
    + "n" * 80
    + "'\n1/2\tCOMMIT 3 (at 7-7-4 3:5:9+9999999999999999)",
    "bad-lsn": "-1/+2\tCOMMIT 1\n123456789/0\tCOMMIT 2",
}
for name, text in logical.items():
    write("logical", name, text)

# --- notify: payloads, one per line ----------------------------------------------------

notify = {
    "update": '{"schema":"public","table":"products","op":"UPDATE","ts":1714566896123.456,'
    '"old":{"category":"books","id":"1"},"new":{"category":"games","id":"1"}}',
    "ts-minus-1e300": '{"ts":-1e300,"schema":"public","table":"products","op":"INSERT","new":{"id":"1"}}',
    "ts-huge": '{"schema":"public","table":"products","op":"INSERT","ts":1e300,"new":{"id":"1"}}\n'
    '{"schema":"public","table":"products","op":"DELETE","ts":-9223372036854775808,"old":{"id":"2"}}',
    "explicit": '{"namespace":"products","keys":["42"],"tags":[],"created":true}',
    "overflow": '{"schema":"public","table":"products","op":"DELETE","ts":2,"overflow":true}',
    "audit-and-other": '{"schema":"public","table":"audit","op":"INSERT","ts":1,"old":null,'
    '"new":{"id":"1","name":null}}\n{"schema":"public","table":"other","op":"INSERT","ts":1}\nnot json',
}
for name, text in notify.items():
    write("notify", name, text)
