"""How the STARFACE sandbox spells XML-RPC values on the wire: the plain spec types, or Java's.

STARFACE's UCI runs on Apache XML-RPC (Java).  With its extensions enabled, a Java server writes
``long`` values as ``<ex:i8>``, ``null`` as ``<ex:nil/>``, dates as ``<ex:dateTime>`` (ISO 8601 with
milliseconds and a zone), all in the namespace ``http://ws.apache.org/xmlrpc/namespaces/extensions``,
and strings often without a type tag (``<value>text</value>``, which the spec allows).  The default
``plain`` mode speaks the types documented in ``docs/starface-wire.md``; ``extensions`` plays the Java
server, so the bridge's tolerant reader (``service.starface.xmlrpc``) is tested on real sockets.

Only UCI answers and call-event callbacks change; faults keep the plain encoding in both modes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from service.starface import xmlrpc

PLAIN = "plain"
EXTENSIONS = "extensions"
WIRE_TYPES = (PLAIN, EXTENSIONS)
EXTENSIONS_NAMESPACE = "http://ws.apache.org/xmlrpc/namespaces/extensions"

_HEAD = "<?xml version='1.0' encoding='UTF-8'?>\n"


@dataclass
class Wire:
    """The mode in force; one shared object, switched at run time by the control API."""

    types: str = PLAIN


def _extension_value(value: Any) -> str:
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int):
        return f"<value><ex:i8>{value}</ex:i8></value>"
    if isinstance(value, float):
        return f"<value><double>{value!r}</double></value>"
    if value is None:
        return "<value><ex:nil/></value>"
    if isinstance(value, str):
        # An absent name or number: Java hands over null, which the extensions write as <nil/>
        # (some servers without the prefix); a present one goes untyped.
        return "<value><nil/></value>" if value == "" else f"<value>{escape(value)}</value>"
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        stamp = aware.isoformat(timespec="milliseconds")
        return f"<value><ex:dateTime>{stamp}</ex:dateTime></value>"
    if isinstance(value, dict):
        members = "".join(
            f"<member><name>{escape(str(k))}</name>{_extension_value(v)}</member>" for k, v in value.items()
        )
        return f"<value><struct>{members}</struct></value>"
    if isinstance(value, list | tuple):
        return f"<value><array><data>{''.join(_extension_value(v) for v in value)}</data></array></value>"
    raise TypeError(f"cannot encode {type(value).__name__} as XML-RPC")


def dumps_response(value: Any, types: str) -> bytes:
    if types != EXTENSIONS:
        return xmlrpc.dumps_response(value)
    return (
        f'{_HEAD}<methodResponse xmlns:ex="{EXTENSIONS_NAMESPACE}"><params><param>'
        f"{_extension_value(value)}</param></params></methodResponse>"
    ).encode()


def dumps_call(method: str, params: list[Any], types: str) -> bytes:
    if types != EXTENSIONS:
        return xmlrpc.dumps_call(method, params)
    body = "".join(f"<param>{_extension_value(p)}</param>" for p in params)
    return (
        f'{_HEAD}<methodCall xmlns:ex="{EXTENSIONS_NAMESPACE}"><methodName>{escape(method)}</methodName>'
        f"<params>{body}</params></methodCall>"
    ).encode()
