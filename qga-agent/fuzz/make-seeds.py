#!/usr/bin/env python3
"""Writes the seed corpus seeds/agent/: byte 0 flags (bit 0 small limits, bits 1-2
the chunk size), byte 1 the chunk seed, bytes 2-9 the sync id (little-endian i64),
then the stream."""
import json
import os
import struct

os.chdir(os.path.dirname(os.path.abspath(__file__)))
d = "seeds/agent"
os.makedirs(d, exist_ok=True)


def seed(name, flags, seed_b, sid, body):
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes([flags, seed_b]) + struct.pack("<q", sid) + body)


def req(cmd, args=None, id=None):
    r = {"execute": cmd}
    if args is not None:
        r["arguments"] = args
    if id is not None:
        r["id"] = id
    return json.dumps(r).encode()


seed("ping", 0, 1, 7, req("guest-ping", id=1) + b"\n")
seed("files", 2 << 1, 9, 12345, b"".join([
    req("guest-file-open", {"path": "/f", "mode": "r"}, 1),
    req("guest-file-read", {"handle": 1000, "count": 5}, 2),
    req("guest-file-open", {"path": "/empty", "mode": "w+"}, 3),
    req("guest-file-write", {"handle": 1001, "buf-b64": "aGVsbG8="}, 4),
    req("guest-file-seek", {"handle": 1001, "offset": 0, "whence": "set"}, 5),
    req("guest-file-read", {"handle": 1001}, 6),
    req("guest-file-flush", {"handle": 1001}, 7),
    req("guest-file-close", {"handle": 1000}, 8),
    req("guest-file-close", {"handle": 1000}, 9),
]))
seed("queries", 1 << 1, 3, -1, b" ".join(req(c, id=i) for i, c in enumerate([
    "guest-info", "guest-get-osinfo", "guest-get-time", "guest-get-host-name",
    "guest-get-timezone", "guest-get-users", "guest-get-vcpus", "guest-get-fsinfo",
    "guest-get-disks", "guest-network-get-interfaces", "guest-get-memory-block-info",
    "guest-fsfreeze-status"])) + req("guest-sync", {"id": 42}))
seed("state", 3 << 1, 5, 99, b"\n".join([
    req("guest-fsfreeze-freeze", id="a"), req("guest-ping", id="b"),
    req("guest-fsfreeze-thaw", id="c"),
    req("guest-exec", {"path": "/bin/true", "capture-output": True}, 1),
    req("guest-exec-status", {"pid": 4000}, 2),
    req("guest-ssh-add-authorized-keys", {"username": "alice", "keys": ["ssh-ed25519 AAAA k"]}, 3),
    req("guest-ssh-get-authorized-keys", {"username": "alice"}, 4),
    req("guest-set-time", {"time": 1700000000000000000}, 5),
    req("guest-shutdown", {"mode": "reboot"}),
]))
seed("garbage", 0, 2, 1, b'{"a":"}\\"\xff[[{}]] junk 42 \x00\x80 ab\x01{"a":"x\\\t"}\n{}')
seed("resync", 1, 4, 3, b'\xff\xff{"execute":"guest-ping"\xff\xff"abc\xff{"execute":"guest-sync-delimited","arguments":{"id":5}}{"execute":"guest-ping","id":[1,{"x":null}]}"unterminated')
seed("stray", 2 << 1, 6, 8, b'{"execute":"guest-ping\n"}\x80{"execute":"guest-ping","id":1}\x1f}]')
seed("deep", 1, 7, 2, b"[" * 100 + b'{"execute":"guest-ping"}')
seed("oversized", 1 | 3 << 1, 8, 4, b'{"execute":"guest-ping","id":"' + b"a" * 5000 + b'"}{"execute":"guest-ping"}')
seed("badargs", 0, 10, 5, b"".join([
    req("guest-file-read", {"handle": 1000, "count": -1}, 1),
    req("guest-file-open", {"path": "/nope"}, 2),
    b'{"execute":"guest-ping","arguments":{"x":1}}', b'{"execute":1}',
    b'{"execute":"guest-ping","execute":"x"}',
    b'{"execute":"guest-sync","arguments":{"id":1e400}}',
    b'{"execute":"no-such-cmd","id":"\\ud800"}',
]))
