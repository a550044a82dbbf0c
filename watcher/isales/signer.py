"""The C2 AK/SK request signature (``auth-v2``) of the CC-iSales OpenAPI. The only signing code."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

__all__ = ("Signer", "format_timestamp", "normalize")


def normalize(text: str) -> str:
    """Percent-encode UTF-8 bytes except ``A-Z a-z 0-9 - . _ ~``, with upper-case hex."""
    return quote(text, safe="-._~")


def _hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def format_timestamp(at: datetime) -> str:
    """``yyyy-MM-ddTHH:mm:ssZ`` in UTC, without milliseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _canonical(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: str
) -> tuple[str, str]:
    signed = sorted(headers)
    lines = [method.upper(), path]
    if query:
        lines.append("&".join(f"{normalize(k)}={normalize(v)}" for k, v in sorted(query.items())))
    lines.append(";".join(signed))
    lines.extend(f"{normalize(name)}:{normalize(headers[name].strip())}" for name in signed)
    return ";".join(signed), "\n".join(lines) + "\n" + (normalize(body) if body else "")


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs requests with an access key and a secret key.

    Args:
        access_key: the AK issued by the iSales operators.
        secret_key: the SK; never logged.
    """

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"Signer(access_key={self.access_key[:4]}…)"

    def authorization(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: str,
        *,
        at: datetime,
        query: Mapping[str, str] | None = None,
    ) -> str:
        """The ``Authorization`` header value.

        Args:
            method: the HTTP method.
            path: the request path exactly as sent, without host or query.
            headers: the signed headers by name; names are lower-cased here.
            body: the exact body text sent.
            at: the signing time.
            query: query parameters, if any.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        signed_names, canonical = _canonical(method, path, query or {}, lowered, body)
        prefix = f"auth-v2/{self.access_key}/{format_timestamp(at)}/{signed_names}"
        signing_key = _hmac_hex(self.secret_key, prefix)
        return f"{prefix}/{_hmac_hex(signing_key, canonical)}"
