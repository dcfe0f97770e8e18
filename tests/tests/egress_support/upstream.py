# Test upstreams for the egress tests: HTTP, HTTPS and UDP listeners that log everything they
# receive (one line per request, datagram or TLS handshake) so a test can prove that a request
# never arrived. Run by the tests on loopback and inside a network namespace they create.
#
# usage: python3 upstream.py CONFIG_JSON LOG_FILE
#   CONFIG_JSON: {"listeners": [{"kind": "http"|"https"|"udp", "addr": "...", "port": N}, ...],
#                 "cert": "server.pem", "key": "server.key"}
# Prints "ready <port> <port> ..." (the bound ports, in listener order) once every listener is up.
#
# Responses never echo header values: headers are reported as SHA-256 digests, so a secret the
# proxy injected can be checked without the response carrying it back to the sandbox.
import hashlib
import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

config = json.loads(sys.argv[1])
log_path = sys.argv[2]
log_lock = threading.Lock()


def log(line):
    with log_lock:
        with open(log_path, "a") as f:
            f.write(line.replace("\n", "\\n") + "\n")


def digest(v):
    return hashlib.sha256(v.encode("latin-1")).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cma-test-upstream"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(min(n, 1 << 20)) if n else b""
        local = self.server.server_address
        log("%s %s:%s %s %s host=%s body=%d" % (
            self.server.kind, local[0], local[1], self.command, self.path,
            self.headers.get("host"), len(body)))
        url = urlsplit(self.path)
        if url.path == "/redirect":
            to = parse_qs(url.query).get("to", ["/"])[0]
            self.reply(302, b"", [("location", to)])
            return
        echo = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("host"),
            "headers": {k.lower(): digest(v) for k, v in self.headers.items()},
            "body_len": len(body),
        }
        status = 500 if url.path.startswith("/error") else 200
        self.reply(status, json.dumps(echo).encode(), [("content-type", "application/json")])

    def reply(self, status, body, headers):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, kind):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.kind = kind
        super().__init__(addr, Handler)


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(config["cert"], config["key"])
    ctx.set_alpn_protocols(["http/1.1"])

    def on_sni(sock, name, _ctx):
        local = sock.getsockname()
        log("tls %s:%s sni=%s" % (local[0], local[1], name))

    ctx.sni_callback = on_sni
    return ctx


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        local = sock.getsockname()
        log("udp %s:%s from=%s data=%s" % (local[0], local[1], peer[0], data[:200].decode("latin-1")))
        sock.sendto(b"pong " + data[:64], peer)


ports = []
for l in config["listeners"]:
    addr = (l["addr"], l["port"])
    if l["kind"] == "udp":
        family = socket.AF_INET6 if ":" in l["addr"] else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(addr)
        ports.append(s.getsockname()[1])
        threading.Thread(target=serve_udp, args=(s,), daemon=True).start()
        continue
    srv = Server(addr, l["kind"])
    if l["kind"] == "https":
        srv.socket = tls_context().wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
        orig = srv.finish_request

        def finish(request, client_address, orig=orig):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                log("tls-failed %s" % e.__class__.__name__)
                return
            orig(request, client_address)

        srv.finish_request = finish
    ports.append(srv.server_address[1])
    threading.Thread(target=srv.serve_forever, daemon=True).start()

print("ready " + " ".join(str(p) for p in ports), flush=True)
threading.Event().wait()
