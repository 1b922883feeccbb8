"""A server on the internet side of the lab (clients), for outbound traffic from VMs: on
TCP and UDP port 9000 it answers every message with the address and port it came from, as
this server saw them. A VM behind outbound SNAT so learns its public identity (the VIP and
a port from its range), like `curl ifconfig.me`."""
from __future__ import annotations

import socketserver

PORT = 9000


class TCPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(600)
        reply = f"{self.client_address[0]} {self.client_address[1]}\n".encode()
        try:
            while sock.recv(65536):
                sock.sendall(reply)
        except OSError:
            pass


class UDPHandler(socketserver.BaseRequestHandler):
    def handle(self):
        _, sock = self.request
        sock.sendto(f"{self.client_address[0]} {self.client_address[1]}\n".encode(), self.client_address)


class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


def main() -> None:
    import threading
    udp = socketserver.ThreadingUDPServer(("0.0.0.0", PORT), UDPHandler)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    TCPServer(("0.0.0.0", PORT), TCPHandler).serve_forever()


if __name__ == "__main__":
    main()
