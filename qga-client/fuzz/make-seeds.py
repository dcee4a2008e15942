#!/usr/bin/env python3
"""Writes the seed corpus seeds/client/: scripts in the byte format that
fuzz_targets/client.rs parses (arbitrary's Unstructured: an int_in_range takes as
many big-endian bytes as its range needs, modulo the range). Re-run it after
changing the parser."""
import os

os.chdir(os.path.dirname(os.path.abspath(__file__)))
os.makedirs("seeds/client", exist_ok=True)

PIPE = {64: 0, 4096: 1, 1 << 20: 2}
CALLS = "ping info sync osinfo file_read file_write raw shutdown freeze".split()
FILLERS = {b"a": 0, b"1": 1, b" ": 2, b"[": 3, b"\xff": 4, b"\n": 5}
SIZES = {"4k": 0, "64k": 1, "1m": 2, "over": 3}
IDS = {"ours": 0, "wrong": 1, "missing": 2}


def u16(v):
    return bytes([v >> 8, v & 0xFF])


def script(pipe, quick, file, slow, grace, calls, then, ops):
    b = bytes([PIPE[pipe]]) + u16(quick) + u16(file) + u16(slow) + u16(grace)
    b += bytes([len(calls) - 1]) + bytes(CALLS.index(c) for c in calls)
    kind, *args = then
    b += bytes([["silent", "close", "wrong_ids", "sentinels", "endless"].index(kind)])
    if kind in ("wrong_ids", "sentinels"):
        b += bytes([args[0] - 1])
    elif kind == "endless":
        b += bytes([args[0] - 10, FILLERS[args[1]]])
    for op, *a in ops:
        if op == "raw":
            b += bytes([0]) + u16(len(a[0])) + a[0]
        elif op == "sentinels":
            b += bytes([1]) + u16(a[0] - 1)
        elif op == "sync":  # (sentinel, previous)
            b += bytes([2, int(a[0]), int(a[1])])
        elif op == "reply":  # (id kind, body index; 5 = an error)
            b += bytes([3, IDS[a[0]], a[1]])
        elif op == "wrong_ids":
            b += bytes([4]) + u16(a[0] - 1)
        elif op == "flood":  # (prefix, filler, size, suffix)
            b += bytes([5, len(a[0])]) + a[0] + bytes([FILLERS[a[1]], SIZES[a[2]], len(a[3])]) + a[3]
        elif op == "big":
            b += bytes([6, SIZES[a[0]]])
        elif op == "sleep":
            b += bytes([7]) + u16(a[0])
        elif op == "wait":
            b += bytes([8])
        elif op == "pause":
            b += bytes([9]) + u16(a[0])
        elif op == "close":
            b += bytes([10])
    return b


def proper(n, body=0, synced=False):
    """A well-behaved agent for n calls: the sync before the first (unless the
    client is in step already), then each request's reply."""
    ops = [] if synced else [("wait",), ("sync", True, False)]
    return ops + [("wait",), ("reply", "ours", body)] * n


SEEDS = {
    # A well-behaved agent.
    "proper": script(4096, 1000, 2000, 4000, 500, ["ping", "raw", "info"], ("silent",), proper(3)),
    # Garbage and a stale reply before the sentinel, then proper replies.
    "garbage": script(64, 1000, 2000, 4000, 500, ["ping", "osinfo"], ("silent",),
                      [("wait",), ("raw", b'{"return": 666, "id": "stale"}\n junk \x00\x80{"a":"}'),
                       ("wrong_ids", 3), ("sync", True, False), ("wait",),
                       ("raw", b'{"return":"x"}\n'), ("reply", "ours", 0)] + proper(1, 4, True)),
    # 0xFF storms around the sync reply, and forever after.
    "storm": script(4096, 500, 2000, 4000, 100, ["sync", "ping", "file_read"], ("sentinels", 1),
                    [("sentinels", 500), ("wait",), ("sentinels", 3), ("sync", True, False),
                     ("sentinels", 1000), ("wait",), ("reply", "ours", 3)]),
    # Wrong ids forever: every call times out.
    "wrong-ids": script(4096, 300, 600, 900, 100, ["ping", "raw", "freeze"], ("wrong_ids", 5),
                        [("wait",), ("sync", True, False), ("wait",), ("wrong_ids", 100)]),
    # An endless line: a string that never closes.
    "endless": script(4096, 300, 600, 900, 100, ["ping", "sync"], ("endless", 10, b"a"),
                      [("raw", b'{"return":"')]),
    # A reply past the client's limit, then a proper agent.
    "oversized": script(1 << 20, 2000, 4000, 8000, 500, ["ping", "ping"], ("silent",),
                        [("wait",), ("sync", True, False), ("wait",),
                         ("flood", b'{"return":"', b"a", "over", b'"}\n')] + proper(1)),
    # A 64 MiB guest-file-read reply (the largest legitimate one), then one past it.
    "big-reply": script(1 << 20, 2000, 4000, 8000, 500, ["file_read", "file_read"], ("close",),
                        [("wait",), ("sync", True, False), ("wait",), ("big", "1m"),
                         ("wait",), ("sync", True, False), ("wait",), ("big", "over")]),
    # A sync reply without its 0xFF, one with the previous id, an error without id.
    "bad-sync": script(4096, 1000, 2000, 4000, 500, ["ping", "ping", "raw"], ("silent",),
                       [("wait",), ("sync", False, False), ("sync", True, True), ("sync", True, False),
                        ("wait",), ("reply", "missing", 5), ("wait",), ("sync", True, False),
                        ("wait",), ("reply", "missing", 1), ("reply", "wrong", 0), ("reply", "ours", 1)]),
    # A peer that stops reading (the client's write blocks), then closes.
    "stalled": script(64, 1000, 2000, 4000, 500, ["file_write", "shutdown", "ping"], ("close",),
                      [("pause", 1500), ("wait",), ("sync", True, False), ("pause", 3000),
                       ("sleep", 2500), ("wait",), ("reply", "ours", 5), ("close",)]),
    # Nesting past the limit and a deep reply.
    "deep": script(4096, 1000, 2000, 4000, 500, ["ping", "ping"], ("silent",),
                   [("wait",), ("sync", True, False), ("wait",), ("flood", b"", b"[", "4k", b"")]
                   + proper(1)),
}

for name, data in SEEDS.items():
    with open(os.path.join("seeds/client", name), "wb") as f:
        f.write(data)
