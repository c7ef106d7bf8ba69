"""A second institution for tests that need two: its certificates, its doctors, its client.

The session PKI (tests/conftest.py) belongs to H100200. :func:`mint_institution` issues another
institution's qualified signing certificate from the same qualified CA (organizationIdentifier
names the institution) and its own mutual-TLS access certificate from the WAF CA, the way
`eeszt-gw pki init` does for the first one. :func:`users_file_with` writes a users file holding
the session's doctors and some of the other institution's, for a simulator started with
``--users-file``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from simulator.pki import PkiPaths, issue_certificate, write_pem
from simulator.users import write_demo_users
from workers.client.client import ClientFiles, EesztClient
from workers.client.transport import Timeouts
from workers.client.wsse import WsseSigner


def _ca(cert: Path, key: Path):
    return (load_pem_private_key(key.read_bytes(), password=None),
            x509.load_pem_x509_certificate(cert.read_bytes()))


def mint_institution(pki: PkiPaths, directory: Path, *, institution_id: str = "H100300",
                     name: str = "Másik Kórház") -> ClientFiles:
    """Certificates of another institution, trusted by the simulator of ``pki``, in
    ``directory`` (created); returns the files its gateway would use."""
    directory.mkdir(parents=True, exist_ok=True)
    q_key, q_cert = _ca(pki.qualified_ca_cert, pki.qualified_ca_key)
    inst_key, inst_cert = issue_certificate(q_key, q_cert, common_name=f"{name} HIS",
                                            organization=name,
                                            organization_identifier=institution_id)
    waf_key, waf_cert = _ca(pki.waf_ca_cert, pki.waf_ca_key)
    access_key, access_cert = issue_certificate(waf_key, waf_cert,
                                                common_name=f"{institution_id} HIS access",
                                                organization=name,
                                                organization_identifier=institution_id)
    files = ClientFiles(access_cert=directory / "access.pem", access_key=directory / "access.key",
                        server_ca=directory / "server-ca.pem",
                        institution_cert=directory / "institution.pem",
                        institution_key=directory / "institution.key")
    for path, obj in ((files.institution_key, inst_key), (files.institution_cert, inst_cert),
                      (files.access_key, access_key), (files.access_cert, access_cert)):
        write_pem(path, obj)
    shutil.copyfile(pki.server_ca_cert, files.server_ca)
    return files


def signer_without_institution(pki: PkiPaths) -> WsseSigner:
    """A signer whose certificate is from the qualified CA but names no institution."""
    q_key, q_cert = _ca(pki.qualified_ca_cert, pki.qualified_ca_key)
    key, cert = issue_certificate(q_key, q_cert, common_name="HIS without an institution id",
                                  organization="Névtelen")
    return WsseSigner(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM))


def users_file_with(pki: PkiPaths, path: Path, *, institution_id: str = "H100300",
                    count: int = 3, first_stamp: int = 20001) -> list[dict[str, Any]]:
    """Write ``path``: the session's doctors plus ``count`` doctors of ``institution_id``
    (mode 0600); returns the added doctors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    others = write_demo_users(path, institution=institution_id, count=count,
                              first_stamp=first_stamp)
    users = json.loads((pki.directory / "users.json").read_text())["users"] + others
    path.write_text(json.dumps({"users": users}, indent=2))
    path.chmod(0o600)
    return others


def client_for(base_url: str, files: ClientFiles) -> EesztClient:
    return EesztClient(base_url=base_url, files=files, timeouts=Timeouts(connect=5, read=10))
