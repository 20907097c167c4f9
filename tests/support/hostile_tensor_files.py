"""Safetensors files with hostile headers, each with what its refusal says: the faults an
attacker's probe found (issue #15) and their siblings. Made on demand (some are megabytes)."""

from collections.abc import Callable

from app.engine.tensor_file import (
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_NAME_CHARS,
    MAX_TENSORS,
)


def with_header(text: bytes, payload: bytes = b"") -> bytes:
    """A file of this header text (its length field as written) and data section."""
    return len(text).to_bytes(8, "little") + text + payload


def empty_entry(name: str, shape: str = "[0]", offsets: str = "[0,0]", dtype: str = '"F32"') -> str:
    return f'"{name}":{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}}}'


def header_of(*entries: str) -> bytes:
    return ("{" + ",".join(entries) + "}").encode()


def empty_tensors(count: int) -> bytes:
    return header_of(*(empty_entry(f"t{index}") for index in range(count)))


def metadata_entries(count: int, value: str = "") -> bytes:
    entries = ",".join(f'"k{index}":"{value}"' for index in range(count))
    return ("{" + f'"__metadata__":{{{entries}}}' + "}").encode()


def _deep(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


NAMED: dict[str, tuple[Callable[[], bytes], str]] = {
    "nested-200k-deep": (lambda: with_header(_deep(200_000)), "nests deeper than 3 levels"),
    "zero-size-dimension-2**63": (
        lambda: with_header(header_of(empty_entry("a", f"[{2**63},0]"))),
        "too large to address",
    ),
    "600k-empty-tensors-38MiB": (lambda: with_header(empty_tensors(600_000)), "over the limit"),
}
"""The cases the probe found: a 500 (RecursionError, overflow in `view`) or 14-20 s of the
inference thread."""

SIBLINGS: dict[str, tuple[Callable[[], bytes], str]] = {
    "nested-4-deep": (
        lambda: with_header(header_of(empty_entry("a", "[[0]]"))),
        "nests deeper than 3 levels",
    ),
    "open-brackets-filling-the-header": (
        lambda: with_header(b"{" + b"[" * (MAX_HEADER_BYTES - 1)),
        "nests deeper than 3 levels",
    ),
    "dimension-2**64": (
        lambda: with_header(header_of(empty_entry("a", f"[{2**64},0]"))),
        "too large to address",
    ),
    "dimensions-whose-product-overflows": (
        lambda: with_header(header_of(empty_entry("a", f"[{2**40},{2**40},0]"))),
        "too large to address",
    ),
    "too-many-dimensions": (
        lambda: with_header(header_of(empty_entry("a", "[" + "1," * MAX_DIMS + "0]"))),
        "invalid shape",
    ),
    "negative-dimension": (
        lambda: with_header(header_of(empty_entry("a", "[-1]"))),
        "invalid shape",
    ),
    "float-dimension": (
        lambda: with_header(header_of(empty_entry("a", "[0.0]"))),
        "not an integer",
    ),
    "bool-dimension": (
        lambda: with_header(header_of(empty_entry("a", "[false]"))),
        "invalid shape",
    ),
    "data-offsets-beyond-the-file": (
        lambda: with_header(header_of(empty_entry("a", "[1]", "[0,4]"))),
        "the tensors take 4 bytes, the data section 0",
    ),
    "data-offsets-2**64": (
        lambda: with_header(header_of(empty_entry("a", "[0]", f"[{2**64},{2**64}]"))),
        "does not start where",
    ),
    "header-length-2**64-1": (lambda: (2**64 - 1).to_bytes(8, "little") + b"{}", "over the limit"),
    "header-one-byte-over-the-limit": (
        lambda: with_header(b"{" + b" " * (MAX_HEADER_BYTES - 1) + b"}"),
        "over the limit",
    ),
    "not-utf8": (lambda: with_header(b'{"\xff":1}'), "not valid JSON"),
    "byte-order-mark": (lambda: with_header(b"\xef\xbb\xbf{}"), "not a JSON object"),
    "nan": (lambda: with_header(header_of(empty_entry("a", "[NaN]"))), "not an integer: 'NaN'"),
    "infinity": (lambda: with_header(b'{"__metadata__":{"a":-Infinity}}'), "not an integer"),
    "1e999": (
        lambda: with_header(header_of(empty_entry("a", "[1e999]"))),
        "not an integer: '1e999'",
    ),
    "100k-digit-integer": (
        lambda: with_header(header_of(empty_entry("a", "[" + "9" * 100_000 + "]"))),
        "a number of 100000 digits",
    ),
    "21-digit-integer": (
        lambda: with_header(header_of(empty_entry("a", "[" + "1" * 21 + "]"))),
        "a number of 21 digits",
    ),
    "duplicate-tensor": (
        lambda: with_header(header_of(empty_entry("a"), empty_entry("a"))),
        "names 'a' twice",
    ),
    "duplicate-through-an-escape": (
        lambda: with_header(header_of(empty_entry("a"), empty_entry("\\u0061"))),
        "names 'a' twice",
    ),
    "duplicate-field": (
        lambda: with_header(
            b'{"a":{"dtype":"F32","dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
        ),
        "names 'dtype' twice",
    ),
    "metadata-string-over-the-limit": (
        lambda: with_header(metadata_entries(1, "x" * MAX_HEADER_BYTES)),
        "over the limit",
    ),
    "metadata-not-a-string": (
        lambda: with_header(b'{"__metadata__":{"a":{"b":"c"}}}'),
        "metadata must map strings to strings",
    ),
    "too-many-metadata-entries": (
        lambda: with_header(metadata_entries(MAX_METADATA_ENTRIES + 1)),
        f"at most {MAX_METADATA_ENTRIES}",
    ),
    "too-many-tensors": (
        lambda: with_header(empty_tensors(MAX_TENSORS + 1)),
        f"at most {MAX_TENSORS}",
    ),
    "tensor-name-of-megabytes": (
        lambda: with_header(header_of(empty_entry("n" * 4 * 2**20))),
        "over the limit",
    ),
    "tensor-name-over-the-name-limit": (
        lambda: with_header(header_of(empty_entry("n" * (MAX_NAME_CHARS + 1)))),
        f"at most {MAX_NAME_CHARS}",
    ),
    "metadata-key-over-the-name-limit": (
        lambda: with_header(b'{"__metadata__":{"' + b"k" * (MAX_NAME_CHARS + 1) + b'":""}}'),
        f"at most {MAX_NAME_CHARS}",
    ),
    "lone-surrogate-in-a-name": (
        lambda: with_header(header_of(empty_entry("\\ud800"))),
        "is not valid Unicode",
    ),
    "lone-surrogate-in-metadata": (
        lambda: with_header(b'{"__metadata__":{"a":"\\udfff"}}'),
        "is not valid Unicode",
    ),
    "dtype-not-a-string": (
        lambda: with_header(header_of(empty_entry("a", dtype="{}"))),
        "unsupported dtype {}",
    ),
    "escaped-quotes-filling-the-header": (
        lambda: with_header(b'{"' + b'\\"' * ((MAX_HEADER_BYTES - 4) // 2) + b'"}'),
        "not valid JSON",
    ),
}
"""Siblings: what else a header can do to a parser, and the limits just crossed."""

HOSTILE = NAMED | SIBLINGS
