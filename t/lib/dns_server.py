#!/usr/bin/env python3
"""A DNS server for the suites that point nginx's `resolver` at one (t/46, t/77).

  dns_server.py PORT TABLE

Answers A queries on 127.0.0.1:PORT (UDP) from TABLE, a file of "name address" lines
re-read on every query, so that a test can move a name while nginx runs. A name whose
address is "silent" gets no answer at all (a resolver that times out); any other name, or
a query for another type, gets an answer with no address (NXDOMAIN when the name is not in
the table).
"""

import socket
import sys

port, table = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 17:
        continue
    i, labels = 12, []
    while i < len(q) and q[i] != 0:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace").lower())
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = int.from_bytes(q[i + 1:i + 3], "big")
    with open(table) as f:
        answers = dict(line.split() for line in f if len(line.split()) == 2)
    addr = answers.get(".".join(labels))
    if addr == "silent":
        continue
    an = b""
    if addr and qtype == 1:
        an = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04" + socket.inet_aton(addr)
    flags = bytes([0x84 | (q[2] & 0x01), 0x80 | (0 if addr else 3)])
    s.sendto(q[:2] + flags + b"\x00\x01" + (b"\x00\x01" if an else b"\x00\x00")
             + b"\x00\x00\x00\x00" + question + an, peer)
