#!/usr/bin/env python3
"""Splits a `perf record --call-graph dwarf` profile of the devnet into cost classes.

Usage: perf script -i put.data -F comm,tid,ip,sym | python3 network-perf-split.py

Each sample is put in the first class (in the order below) whose pattern matches any
frame of its stack, so a sample inside an fsync counts as disk sync even when its leaf
is the scheduler. cpu-clock samples in a VM land where interrupts are re-enabled
(finish_task_switch, _raw_spin_unlock_irqrestore): they are the cost of the path that
disabled them, which is why whole stacks, not leaves, are classified.
"""
import re
import sys
from collections import Counter

CLASSES = [
    ("fsync / fdatasync (disk sync)", r"fsync|fdatasync|file_write_and_wait|jbd2|blkdev_issue_flush"),
    ("sled index (insert + flush)", r"sled::"),
    ("fragment files: create/write/rename/read/unlink", r"do_renameat|do_unlinkat|path_openat|do_filp_open|vfs_write|vfs_read|ext4_|filemap_|generic_perform_write|do_sys_openat|__x64_sys_statx|mkdir"),
    ("SHA-256", r"sha2::|digest_blocks"),
    ("Reed-Solomon", r"reed_solomon|reedsolomon|galois"),
    ("ed25519 sign/verify", r"curve25519|ed25519"),
    ("loopback TCP (kernel send/recv)", r"tcp_|inet_|sock_|__sys_sendto|__sys_recvfrom|sendmsg|recvmsg|__x64_sys_write|__x64_sys_read|net_rx|do_softirq|__netif"),
    ("postcard (de)serialisation", r"postcard"),
    ("HTTP (hyper/axum/http-body)", r"hyper::|axum::|http_body|h1::"),
    ("user-space copies (memcpy/memmove)", r"memmove|memcpy|memset"),
    ("thread hand-offs: futex, wakeups, spawn_blocking, parking", r"futex|try_to_wake_up|finish_task_switch|schedule|spawn_blocking|park|epoll|Condvar|mpmc"),
    ("allocation and page faults", r"malloc|_int_free|cfree|page_fault|clear_page|do_anonymous_page|mmap|munmap|madvise"),
]
PATTERNS = [(name, re.compile(p)) for name, p in CLASSES]
HANDOFF = "thread hand-offs: futex, wakeups, spawn_blocking, parking"
# Who causes the hand-offs: the first of these found anywhere on the stack.
CAUSES = [
    ("api::body_reader / BodyReader (a spawn_blocking per upload chunk, std sync_channel)", r"body_reader|BodyReader"),
    ("api::BodyWriter (a block_on per write)", r"BodyWriter"),
    ("daemon::handle_store (a spawn_blocking per fragment)", r"handle_store"),
    ("daemon::handle_past (a spawn_blocking per fetch)", r"handle_past"),
    ("net read/write loops", r"read_loop|read_frames|write_loop"),
    ("gateway store_block / fetch_fragments (block_on, JoinSet)", r"store_block|fetch_fragments|fetch_one|block_on"),
    ("daemon::dispatch_task", r"dispatch_task"),
    ("tokio workers parking and unparking", r"worker::Context::park|park_timeout|park_condvar|multi_thread::park|Context::run|worker::run"),
    ("tokio blocking pool threads waiting for work", r"blocking::pool::Inner::run"),
]
CAUSE_PATTERNS = [(name, re.compile(p)) for name, p in CAUSES]


def samples(lines):
    stack = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
        else:
            stack.append(line)
    if stack:
        yield stack


counts = Counter()
causes = Counter()
total = 0
for stack in samples(sys.stdin):
    frames = " ".join(stack[1:]) or stack[0]
    total += 1
    for name, pattern in PATTERNS:
        if pattern.search(frames):
            counts[name] += 1
            if name == HANDOFF:
                cause = next((c for c, p in CAUSE_PATTERNS if p.search(frames)), "unattributed")
                causes[cause] += 1
            break
    else:
        counts["other"] += 1

print(f"{total} samples")
for name, count in counts.most_common():
    print(f"{100 * count / max(total, 1):5.1f}%  {name}")
print(f"\nthread hand-offs by cause (% of all samples):")
for name, count in causes.most_common():
    print(f"{100 * count / max(total, 1):5.1f}%  {name}")
