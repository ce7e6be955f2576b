"""A key agent that misbehaves, for t/78-key-agent.t: listens on a SOCK_SEQPACKET unix
socket (mode 0666) and, per request, says nothing (silent) or answers a message that is
no response of the agent protocol (garbage).

    stub_agent.py PATH silent|garbage
"""
import os
import select
import socket
import sys


def main():
    path, mode = sys.argv[1], sys.argv[2]
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.listen(64)
    clients = []
    while True:
        ready, _, _ = select.select([srv] + clients, [], [])
        for s in ready:
            if s is srv:
                c, _ = srv.accept()
                clients.append(c)
                continue
            try:
                msg = s.recv(1024)
            except OSError:
                msg = b""
            if not msg:
                clients.remove(s)
                s.close()
                continue
            if mode == "garbage":
                s.send(b"\x07not a response")


if __name__ == "__main__":
    main()
