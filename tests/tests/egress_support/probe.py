# Probes the egress tests run inside a sandbox (python3 from the test image): each tries one way
# out and prints one line saying what happened. Never raises: failures are results.
#
# usage: python3 probe.py KIND ARGS...
import os
import re
import socket
import ssl
import struct
import sys
import urllib.parse
import urllib.request

TIMEOUT = 3


def proxy_addr():
    u = urllib.parse.urlsplit(os.environ.get("HTTP_PROXY", ""))
    return u.hostname, u.port


def out(s):
    print(s, flush=True)


def tcp(host, port, mark):
    try:
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        s.sendall(("GET /bypass/%s HTTP/1.0\r\nHost: %s\r\n\r\n" % (mark, host)).encode())
        data = s.recv(200)
        out("connected %r" % data[:40])
    except OSError as e:
        out("error %s" % e.__class__.__name__)


def udp(host, port, mark):
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(TIMEOUT)
        s.sendto(mark.encode(), (host, int(port)))
        data, _ = s.recvfrom(200)
        out("reply %r" % data[:40])
    except OSError as e:
        out("error %s" % e.__class__.__name__)


def dns_name(name):
    try:
        out("resolved %s" % socket.getaddrinfo(name, 80)[0][4][0])
    except OSError as e:
        out("error %s" % e.__class__.__name__)


def dns_query(server, mark):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in (mark, "api", "test"):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    try:
        fam = socket.AF_INET6 if ":" in server else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(TIMEOUT)
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(512)
        out("reply %d bytes" % len(data))
    except OSError as e:
        out("error %s" % e.__class__.__name__)
    try:
        t = socket.create_connection((server, 53), timeout=TIMEOUT)
        t.sendall(struct.pack(">H", len(q)) + q)
        out("tcp-reply %r" % t.recv(100)[:20])
    except OSError as e:
        out("tcp-error %s" % e.__class__.__name__)


def raw(hexdata):
    host, port = proxy_addr()
    try:
        s = socket.create_connection((host, port), timeout=TIMEOUT)
        s.sendall(bytes.fromhex(hexdata))
        s.settimeout(TIMEOUT)
        data = b""
        try:
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        codes = [c.decode() for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
        sent = len(re.findall(rb" HTTP/1\.1\r\n", bytes.fromhex(hexdata)))
        out("statuses %s of %d" % (",".join(codes), sent))
    except OSError as e:
        out("error %s" % e.__class__.__name__)


def sni(target, server_name, host, mark):
    phost, pport = proxy_addr()
    try:
        s = socket.create_connection((phost, pport), timeout=TIMEOUT)
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = s.recv(1)
            if not c:
                break
            head += c
        status = head.split(b" ")[1].decode() if b" " in head else "none"
        if status != "200":
            out("connect %s" % status)
            return
        ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = ctx.wrap_socket(s, server_hostname=server_name)
        t.sendall(("GET /bypass/%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (mark, host)).encode())
        data = t.recv(200)
        out("response %s" % (data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else repr(data[:20])))
    except (OSError, ssl.SSLError) as e:
        out("error %s" % e.__class__.__name__)


def spoof(victim, mark):
    phost, pport = proxy_addr()
    IP_FREEBIND = 15
    IP_TRANSPARENT = 19
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        out("transparent allowed")
    except OSError as e:
        out("transparent %s" % e.__class__.__name__)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        s.settimeout(TIMEOUT)
        s.bind((victim, 0))
        s.connect((phost, pport))
        s.sendall(("GET http://api.test/bypass/%s HTTP/1.1\r\nHost: api.test\r\n\r\n" % mark).encode())
        out("freebind connected %r" % s.recv(100)[:20])
    except OSError as e:
        out("freebind %s" % e.__class__.__name__)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        out("packet socket allowed")
    except (OSError, AttributeError) as e:
        out("packet %s" % e.__class__.__name__)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        out("raw socket allowed")
    except OSError as e:
        out("raw %s" % e.__class__.__name__)


def fetch(url, *headers):
    req = urllib.request.Request(url)
    for h in headers:
        k, v = h.split(":", 1)
        req.add_header(k, v.strip())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out("status %d %s" % (r.status, r.read().decode("latin-1")))
    except urllib.error.HTTPError as e:
        out("status %d %s" % (e.code, e.read().decode("latin-1")))
    except (OSError, ValueError) as e:
        out("error %s %s" % (e.__class__.__name__, e))


KINDS = {"tcp": tcp, "udp": udp, "dns": dns_name, "dnsq": dns_query, "raw": raw,
         "sni": sni, "spoof": spoof, "fetch": fetch}

if __name__ == "__main__":
    KINDS[sys.argv[1]](*sys.argv[2:])
