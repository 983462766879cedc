"""The sandboxes' throwaway certificate authority, on trustme.

The sandboxes serve real TLS (MSAL accepts only an ``https://`` authority).  Their CA exists only
on this machine; the bridge trusts it only when ``EXTRA_CA_FILE`` names it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class IssuedCertificate:
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert_file.write_bytes(self.cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(self.key_pem)
        return cert_file, key_file

    def server_context(self, directory: Path, stem: str = "server") -> ssl.SSLContext:
        cert_file, key_file = self.write(directory, stem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        return context


class CertificateAuthority:
    def __init__(self, common_name: str = "presence-bridge sandbox CA") -> None:
        self._ca = trustme.CA(organization_name=common_name)

    @property
    def cert_pem(self) -> bytes:
        return self._ca.cert_pem.bytes()

    def write_ca(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def issue(self, hostnames: list[str]) -> IssuedCertificate:
        leaf = self._ca.issue_cert(*hostnames)
        return IssuedCertificate(
            cert_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            key_pem=leaf.private_key_pem.bytes(),
        )
