"""The destination's written total, read while acknowledgements flow, is exact.

The kernel relay orders user space's writes behind the kernel's redirected bytes by a
socket's written total (acknowledged + still queued, `tcp_counts`), measured once as a
pair's base at its first grant. Read with two syscalls, an ACK between them made the
sum short by what it acknowledged; a pair moved to the kernel in the middle of a
download (ACKs flowing) then let passed bytes overtake redirected ones, and TLS clients
saw a corrupt record. Needs no privilege: plain loopback sockets.
"""

from __future__ import annotations

import socket
import threading
import time

from sniffer.proxy.kernel.relay import tcp_counts, written_total

MiB = 1024 * 1024


def test_the_written_total_is_exact_while_acks_flow() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    receiver = socket.create_connection(listener.getsockname())
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sender, _ = listener.accept()
    listener.close()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
    try:
        acked0, queued0 = tcp_counts(sender)  # idle: nothing sent yet
        assert queued0 == 0
        sender.setblocking(False)
        written, chunk = 0, bytes(64 * 1024)
        while written < 16 * MiB:  # what the send buffer takes, at most 16 MiB
            try:
                written += sender.send(chunk)
            except BlockingIOError:
                break
        assert written > 0
        done = threading.Event()

        def drain() -> None:  # small reads: a stream of ACKs, each opening the window
            got, deadline = 0, time.monotonic() + 20
            while got < written and time.monotonic() < deadline:
                data = receiver.recv(4096)
                if not data:
                    break
                got += len(data)
            done.set()

        reader = threading.Thread(target=drain)
        reader.start()
        samples = short = unstable = 0
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            try:
                acked, queued = tcp_counts(sender)
            except BlockingIOError:
                unstable += 1  # (no stable reading this time: the callers look again)
                continue
            samples += 1
            if acked + queued != acked0 + written:
                short += 1
            try:
                if written_total(sender) != acked0 + written:
                    short += 1
            except BlockingIOError:
                unstable += 1
        reader.join(5)
        assert done.is_set(), "the receiver did not drain what was sent"
        assert samples > 100, f"too few readings while ACKs flowed ({samples})"
        assert short == 0, f"{short} of {samples} readings were not the written total"
        assert tcp_counts(sender) == (acked0 + written, 0)  # all acknowledged at the end
    finally:
        sender.close()
        receiver.close()
