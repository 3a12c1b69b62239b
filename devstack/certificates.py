"""A throw-away certificate authority and a server certificate it signed, made with the openssl command.

For servers the tests run over TLS (the fake Bot API, which a bot in a container
reaches over the network): the client is told to trust the authority's
certificate, and nothing else changes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerCertificate:
    authority: Path  # the CA certificate a client trusts (PEM)
    chain: Path  # the server's certificate (PEM)
    key: Path  # the server's private key (PEM)


def make_server_certificate(directory: Path, names: list[str], addresses: list[str]) -> ServerCertificate:
    """A CA and a certificate for `names` (DNS) and `addresses` (IP), valid for a day, under `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("the openssl command is needed to make test certificates (Debian: openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    authority, authority_key = directory / "ca.pem", directory / "ca-key.pem"
    chain, key, request = directory / "server.pem", directory / "server-key.pem", directory / "server.csr"
    extensions = directory / "server.ext"
    alt_names = [f"DNS:{name}" for name in names] + [f"IP:{address}" for address in addresses]
    # The extensions a strict verifier (Python 3.13's default context) requires of both.
    extensions.write_text(
        f"subjectAltName = {','.join(alt_names)}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=Balcao test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash", "-keyout", str(authority_key), "-out", str(authority))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={(names or addresses)[0]}",
        "-keyout", str(key), "-out", str(request))  # fmt: skip
    run("x509", "-req", "-in", str(request), "-CA", str(authority), "-CAkey", str(authority_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(chain))  # fmt: skip
    return ServerCertificate(authority=authority, chain=chain, key=key)
