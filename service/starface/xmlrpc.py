"""XML-RPC encoding and a parser that refuses what an attacker could use.

STARFACE's UCI speaks XML-RPC in both directions, and the callback endpoint is public, so the
parser refuses any DTD (and with it every entity declaration, the root of "billion laughs"),
refuses bodies over a size bound, and accepts only the XML-RPC value types.  The stdlib
``xmlrpc.client`` parser is not used because it accepts DTDs.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import re
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import escape

DEFAULT_MAX_BYTES = 64 * 1024
_MAX_DEPTH = 32


class XmlRpcError(Exception):
    """A body that is not acceptable XML-RPC; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Fault(Exception):
    """An XML-RPC ``<fault>`` answered by the peer."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"fault {code}: {message}")


# -- encoding ----------------------------------------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return f"<value><int>{value}</int></value>"
        return f"<value><i8>{value}</i8></value>"
    if isinstance(value, float):
        return f"<value><double>{value!r}</double></value>"
    if isinstance(value, str):
        return f"<value><string>{escape(value)}</string></value>"
    if isinstance(value, bytes):
        return f"<value><base64>{base64.b64encode(value).decode()}</base64></value>"
    if isinstance(value, dt.datetime):
        return f"<value><dateTime.iso8601>{value.strftime('%Y%m%dT%H:%M:%S')}</dateTime.iso8601></value>"
    if value is None:
        return "<value><nil/></value>"
    if isinstance(value, dict):
        members = "".join(
            f"<member><name>{escape(str(k))}</name>{_value(v)}</member>" for k, v in value.items()
        )
        return f"<value><struct>{members}</struct></value>"
    if isinstance(value, list | tuple):
        return f"<value><array><data>{''.join(_value(v) for v in value)}</data></array></value>"
    raise TypeError(f"cannot encode {type(value).__name__} as XML-RPC")


def dumps_call(method: str, params: list[Any] | tuple[Any, ...] = ()) -> bytes:
    body = "".join(f"<param>{_value(p)}</param>" for p in params)
    return (
        f"<?xml version='1.0' encoding='UTF-8'?>\n<methodCall><methodName>{escape(method)}</methodName>"
        f"<params>{body}</params></methodCall>"
    ).encode()


def dumps_response(value: Any) -> bytes:
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n<methodResponse><params><param>"
        f"{_value(value)}</param></params></methodResponse>"
    ).encode()


def dumps_fault(code: int, message: str) -> bytes:
    fault = _value({"faultCode": code, "faultString": message})
    head = "<?xml version='1.0' encoding='UTF-8'?>\n"
    return f"{head}<methodResponse><fault>{fault}</fault></methodResponse>".encode()


# -- parsing -----------------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "tag", "text")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.children: list[_Node] = []
        self.text: list[str] = []


_DECLARED_ENCODING = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']*)[\"']")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _utf8(body: bytes) -> bytes:
    """The body as UTF-8: a UTF-16/32 body must carry its BOM; any other declared encoding is refused.

    expat looks an unknown declared encoding up in Python's codecs (UTF-7 among them) and raises
    outside its own error type, so the declaration is judged here, before expat sees the bytes.
    """
    for bom, codec in _BOMS:
        if body.startswith(bom):
            try:
                text = body.decode(codec)
            except UnicodeDecodeError:
                raise XmlRpcError("encoding", f"not valid {codec}") from None
            declared = re.match(r"^<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']*)[\"']", text)
            if declared and declared.group(1).lower().replace("_", "-") not in (codec[:6], "utf-8"):
                raise XmlRpcError("encoding", f"declared {declared.group(1)!r} in a {codec} body")
            # expat gets UTF-8 with the declaration dropped, so it cannot contradict the bytes.
            return re.sub(r"^<\?xml[^>]*\?>", "", text).encode("utf-8", "surrogatepass")
    declared_bytes = _DECLARED_ENCODING.match(body)
    if declared_bytes and declared_bytes.group(1).lower() not in (b"utf-8", b"utf8"):
        raise XmlRpcError("encoding", "only UTF-8, or UTF-16/32 with a byte-order mark, is accepted")
    return body


def _tree(body: bytes, max_bytes: int) -> _Node:
    if len(body) > max_bytes:
        raise XmlRpcError("too_large", f"{len(body)} bytes, limit {max_bytes}")
    body = _utf8(body)
    parser = expat.ParserCreate("UTF-8")
    root = _Node("#document")
    stack = [root]

    def refuse_dtd(*_: Any) -> None:
        raise XmlRpcError("dtd", "document type declarations are refused")

    def refuse_entity(*_: Any) -> None:
        raise XmlRpcError("entity", "entity declarations are refused")

    def refuse_external(*_: Any) -> int:
        raise XmlRpcError("entity", "external entities are refused")

    def start(tag: str, _attrs: dict[str, str]) -> None:
        if len(stack) > _MAX_DEPTH:
            raise XmlRpcError("too_deep")
        # Apache XML-RPC prefixes its extension types (``ex:i8``); the prefix carries no meaning here.
        node = _Node(tag.rpartition(":")[2])
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise XmlRpcError("malformed", str(exc)) from None
    except (LookupError, UnicodeError, ValueError) as exc:
        raise XmlRpcError("encoding", type(exc).__name__) from None
    if len(root.children) != 1:
        raise XmlRpcError("malformed", "expected one root element")
    return root.children[0]


def _only(node: _Node, tag: str) -> _Node:
    found = [c for c in node.children if c.tag == tag]
    if len(found) != 1:
        raise XmlRpcError("malformed", f"<{node.tag}> needs exactly one <{tag}>")
    return found[0]


def _decode(value_node: _Node) -> Any:
    if value_node.tag != "value":
        raise XmlRpcError("malformed", f"expected <value>, got <{value_node.tag}>")
    if not value_node.children:
        return "".join(value_node.text)  # a bare <value>text</value> is a string
    if len(value_node.children) != 1:
        raise XmlRpcError("malformed", "<value> holds more than one type")
    typed = value_node.children[0]
    raw = "".join(typed.text).strip()
    try:
        match typed.tag:
            case "string":
                return "".join(typed.text)
            case "int" | "i4" | "i8" | "i1" | "i2" | "biginteger":
                return int(raw)
            case "boolean":
                if raw not in ("0", "1"):
                    raise XmlRpcError("malformed", f"boolean {raw!r}")
                return raw == "1"
            case "double" | "float" | "bigdecimal":
                return float(raw)
            case "nil":
                return None
            case "base64":
                return base64.b64decode(raw, validate=True)
            case "dateTime.iso8601" | "dateTime":
                return _datetime(raw)
            case "struct":
                result: dict[str, Any] = {}
                for member in typed.children:
                    if member.tag != "member":
                        raise XmlRpcError("malformed", "struct holds a non-member")
                    result["".join(_only(member, "name").text)] = _decode(_only(member, "value"))
                return result
            case "array":
                return [_decode(v) for v in _only(typed, "data").children]
    except (ValueError, binascii.Error) as exc:
        raise XmlRpcError("malformed", f"bad <{typed.tag}>: {exc}") from None
    raise XmlRpcError("malformed", f"unknown type <{typed.tag}>")


def _datetime(raw: str) -> dt.datetime:
    """``19980717T14:08:55`` of the spec, or ISO 8601 with dashes, fractions and a zone (``ex:dateTime``)."""
    try:
        return dt.datetime.strptime(raw, "%Y%m%dT%H:%M:%S")
    except ValueError:
        pass
    text = raw[:-1] + "+00:00" if raw.endswith("Z") else raw
    basic = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(T.*)", text)
    if basic:
        text = f"{basic[1]}-{basic[2]}-{basic[3]}{basic[4]}"
    return dt.datetime.fromisoformat(text)


def _params(node: _Node) -> list[Any]:
    params = [c for c in node.children if c.tag == "params"]
    if not params:
        return []
    return [_decode(_only(param, "value")) for param in params[0].children if param.tag == "param"]


def parse_call(body: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, list[Any]]:
    """Parse a ``methodCall`` into its method name and parameters."""
    root = _tree(body, max_bytes)
    if root.tag != "methodCall":
        raise XmlRpcError("malformed", f"expected <methodCall>, got <{root.tag}>")
    method = "".join(_only(root, "methodName").text).strip()
    if not method:
        raise XmlRpcError("malformed", "empty methodName")
    return method, _params(root)


def parse_response(body: bytes, max_bytes: int = 1024 * 1024) -> Any:
    """Parse a ``methodResponse``; a ``<fault>`` raises ``Fault``."""
    root = _tree(body, max_bytes)
    if root.tag != "methodResponse":
        raise XmlRpcError("malformed", f"expected <methodResponse>, got <{root.tag}>")
    faults = [c for c in root.children if c.tag == "fault"]
    if faults:
        detail = _decode(_only(faults[0], "value"))
        if not isinstance(detail, dict):
            raise XmlRpcError("malformed", "fault is not a struct")
        return _raise_fault(detail)
    params = _params(root)
    if len(params) != 1:
        raise XmlRpcError("malformed", "a response carries exactly one value")
    return params[0]


def _raise_fault(detail: dict[str, Any]) -> Any:
    raise Fault(int(detail.get("faultCode", 0)), str(detail.get("faultString", "")))
