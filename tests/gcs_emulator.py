"""A local Google Cloud Storage for tests: the pure-Python `gcp-storage-emulator` on 127.0.0.1, reachable both by
Beam's GCS I/O and by TensorFlow's own `gs://` file system.

Beam (google-cloud-storage) honours `STORAGE_EMULATOR_HOST`. TensorFlow does not: its GCS file system
(tsl/platform/cloud/gcs_file_system.cc) has the endpoints `https://www.googleapis.com/storage/v1/`,
`https://www.googleapis.com/upload/storage/v1/` and `https://storage.googleapis.com/` compiled in, with no
environment variable to override them. What it does honour is libcurl's environment: `HTTPS_PROXY` and
`CURL_CA_BUNDLE`. So TensorFlow is pointed at the emulator through a small TLS-terminating proxy on 127.0.0.1: it
answers CONNECT for those hosts with a certificate signed by a throw-away CA (trusted through `CURL_CA_BUNDLE`),
and forwards each decrypted request to the emulator. Requests reach the emulator with the Host of a plain-HTTP
forwarder (also ours), so the resumable-upload `Location` it hands back leads through the forwarder too, which
decodes libcurl's chunked upload bodies (the emulator would store the chunk framing). One emulator bug is patched
while it runs: a zero-byte media upload (TensorFlow's directory marker `dir/`) has no body and made its handler
fail; it now stores an empty object, as GCS does. Nothing leaves 127.0.0.1; a host
other than Google's storage endpoints is refused.
"""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import os
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.ports import free_ports

GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


@dataclass(frozen=True)
class Emulator:
    host: str  # 127.0.0.1:PORT of the emulator (what STORAGE_EMULATOR_HOST names)
    bucket: str
    proxy: str  # http://127.0.0.1:PORT of the TLS proxy (what HTTPS_PROXY names)
    ca_file: str

    def url(self, *parts: str) -> str:
        return "/".join([f"gs://{self.bucket}", *parts])


def _certificates(folder: Path) -> tuple[str, str, str]:
    """(CA bundle, leaf cert, leaf key) files: a one-day CA and a leaf certificate for GCS_HOSTS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rocketctr test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GCS_HOSTS]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    files[0].write_bytes(ca.public_bytes(pem))
    files[1].write_bytes(leaf.public_bytes(pem))
    files[2].write_bytes(leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return tuple(str(f) for f in files)


class _Forward(http.server.BaseHTTPRequestHandler):
    """One decrypted client connection: every request is replayed against the emulator."""

    protocol_version = "HTTP/1.1"  # keep-alive, as libcurl expects
    emulator: tuple[str, int] = ("127.0.0.1", 0)
    public_host = ""  # the forwarder's host:port, sent as Host so the emulator's links lead back through it

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        skip = {"host", "transfer-encoding", "connection", "proxy-connection", "content-length", "expect"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        headers["Host"] = self.public_host
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.emulator, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, forward: type[_Forward], tls: ssl.SSLContext):
        self.forward, self.tls = forward, tls
        super().__init__(("127.0.0.1", port), _ProxyConnection)


class _ProxyConnection(socketserver.StreamRequestHandler):
    """CONNECT host:443 for a GCS host -> TLS with the test certificate -> `_Forward` on the plain stream."""

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        host = line[1].rsplit(":", 1)[0] if len(line) == 3 and line[0] == "CONNECT" else ""
        if host not in GCS_HOSTS:
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        try:
            tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.server.forward(tls, self.client_address, self.server)
        except (ssl.SSLError, ConnectionError, socket.timeout):
            pass
        finally:  # the TLS socket owns the connection now: close it, or the client waits on a dead stream
            tls.close()


def _serve(emu_port: int, proxy_port: int, forward_port: int, bucket: str, certdir: str) -> None:
    """The child process: emulator + forwarder + TLS proxy until killed."""
    import logging

    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    media_upload = objects._media_upload

    def media_upload_empty_ok(request, response, storage):
        if request.data is None:
            request._data = b""
        return media_upload(request, response, storage)

    objects._media_upload = media_upload_empty_ok
    server = create_server("127.0.0.1", emu_port, in_memory=True, default_bucket=bucket)
    server.start()
    _ca, leaf, key = _certificates(Path(certdir))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(leaf, key)
    forward = type("Forward", (_Forward,), {"emulator": ("127.0.0.1", emu_port),
                                            "public_host": f"127.0.0.1:{forward_port}"})
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", forward_port), forward)
    threading.Thread(target=plain.serve_forever, name="gcs-forwarder", daemon=True).start()
    _Proxy(proxy_port, forward, tls).serve_forever()


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the GCS emulator process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the GCS emulator did not listen on 127.0.0.1:{port} within {timeout} s")


def _anonymous_beam() -> tuple[bool, object]:
    """Beam looks for Google credentials with retries (~25 s here, no metadata server) before it connects
    anonymously; the emulator needs none, so its process-wide cache is set to "anonymous" up front."""
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        saved = auth._Credentials._credentials_init, auth._Credentials._credentials
        auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    return saved


def _restore_beam(saved: tuple[bool, object]) -> None:
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init, auth._Credentials._credentials = saved


@contextmanager
def gcs_emulator(workdir: Path, bucket: str = "rocketctr") -> Iterator[Emulator]:
    """Start the emulator (in memory, `bucket` created) and the TLS proxy in a child process (TensorFlow can hold
    the interpreter lock during a blocking file-system call, so in-process servers would stall it); set the
    environment Beam and TensorFlow read (restored afterwards); yield their addresses."""
    emu_port, proxy_port, forward_port = free_ports(3)
    certdir = Path(workdir)
    certdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, str(emu_port), str(proxy_port), str(forward_port), bucket,
                             str(certdir)], cwd=str(certdir), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])})
    try:
        for port in (emu_port, forward_port, proxy_port):
            _wait_for_port(port, proc)
        env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{emu_port}",  # Beam / google-cloud-storage
               "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}", "https_proxy": f"http://127.0.0.1:{proxy_port}",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
               "CURL_CA_BUNDLE": str(certdir / "ca.pem"),  # TensorFlow's libcurl trusts the test CA
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorFlow: no credential lookup, no metadata server
               "NO_GCE_CHECK": "true"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        beam_auth = _anonymous_beam()
        try:
            yield Emulator(f"127.0.0.1:{emu_port}", bucket, f"http://127.0.0.1:{proxy_port}", env["CURL_CA_BUNDLE"])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _restore_beam(beam_auth)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
