"""Serves the git repositories under ROOT over smart HTTP on ADDR (loopback) by running
`git http-backend` as a CGI per request, the way a web server in front of git does. Fetch and
push both work (every repository is exported; push is enabled per repository by
`http.receivepack=true`, which `flux.sh repo` sets). No authentication: it listens on 127.0.0.1
only, for the local cluster's Flux and the tests.

Usage: python3 git_http.py ROOT HOST:PORT"""
import http.server
import os
import socketserver
import subprocess
import sys
import urllib.parse

BACKEND = os.environ.get("GIT_HTTP_BACKEND", "/usr/lib/git-core/git-http-backend")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.cgi()

    def do_POST(self):  # noqa: N802
        self.cgi()

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def cgi(self):
        url = urllib.parse.urlsplit(self.path)
        data = self.body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            "REMOTE_ADDR": self.client_address[0],
        }
        for h in ("Git-Protocol", "Content-Encoding"):
            if self.headers.get(h):
                env["HTTP_" + h.upper().replace("-", "_")] = self.headers[h]
        p = subprocess.run([BACKEND], input=data, env=env, capture_output=True, timeout=120)
        head, _, payload = p.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = p.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        if p.returncode != 0 and not p.stdout:
            status, payload, headers = 500, p.stderr, [("Content-Type", "text/plain")]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    root, addr = sys.argv[1], sys.argv[2]
    host, port = addr.rsplit(":", 1)
    srv = Server((host, int(port)), Handler)
    srv.root = os.path.abspath(root)
    print(f"git http-backend for {srv.root} on http://{addr}/", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
