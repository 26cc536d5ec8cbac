"""The file parts of a small, plainly formed multipart/form-data body, split in a few slices.

Starlette's form parser (python-multipart's state machine, callbacks per header and per chunk,
an UploadFile over a SpooledTemporaryFile per part, a FormData) took ~80 us of a ~400 us PNG
/predict request on this machine: a fifth of the request's own CPU (py-spy, bench/RESULTS.md).
An upload from a browser, curl, httpx or requests is a few parts in one plain layout, and a
body of at most SMALL_BODY_BYTES is read whole anyway. `split_files` takes exactly that layout:

    --BOUNDARY CRLF headers CRLF CRLF data (CRLF --BOUNDARY CRLF headers CRLF CRLF data)*
    CRLF --BOUNDARY -- [CRLF]

every part a file (`filename` given), headers as python-multipart accepts them (token names,
at most its count and size), a utf-8 (or no) charset. For anything else (a text field, a
preamble or epilogue, a delimiter-like line inside the data, too many files, a malformed
header) it returns None, and Starlette's parser reads the body with its own limits and
answers its own errors: nothing that one refuses is accepted here, and what is accepted comes
out as it would from Starlette (names and filenames through the same `parse_options_header`
and decoding). tests/test_formparts.py checks both against each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from python_multipart.multipart import (
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_HEADER_SIZE,
    MAX_BOUNDARY_LENGTH,
    TOKEN_CHARS,
    parse_options_header,
)

# Bodies up to this are split here; Starlette keeps file parts in memory up to the same size.
SMALL_BODY_BYTES = 1024 * 1024
CHARSETS = (None, b"utf-8", b"UTF-8", b"utf8")
# The headers as clients write them, read with one match each. parse_options_header gives the
# same values for these (nothing quoted or escaped to undo) at a tenth of the cost; any other
# spelling goes through it.
PLAIN_CONTENT_TYPE = re.compile(r"multipart/form-data; boundary=([0-9A-Za-z'()+_,./:=?-]+)")
PLAIN_DISPOSITION = re.compile(rb'form-data; name="([^"\\;]*)"; filename="([^"\\;]*)"')


@dataclass(frozen=True, slots=True)
class FilePart:
    field: str
    filename: str
    data: bytes


def _text(raw: bytes) -> str:
    # Starlette's decoding of names and filenames: the charset (utf-8), else latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _disposition(headers: bytes) -> bytes | None:
    """The part's (last) Content-Disposition value; None for headers python-multipart refuses
    or would read differently."""
    lines = headers.split(b"\r\n")
    if len(lines) > DEFAULT_MAX_HEADER_COUNT:
        return None
    disposition = None
    for line in lines:
        name, colon, value = line.partition(b":")
        if (
            not colon
            or not name
            or name.translate(None, TOKEN_CHARS)  # a character outside the HTTP token set
            or len(line) >= DEFAULT_MAX_HEADER_SIZE
            or b"\r" in value
            or b"\n" in line
        ):
            return None
        if name.lower() == b"content-disposition":
            disposition = value.lstrip(b" ")
    return disposition


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data type with a utf-8 (or no) charset, else None."""
    if plain := PLAIN_CONTENT_TYPE.fullmatch(content_type):
        boundary = plain[1].encode()
    else:
        ctype, params = parse_options_header(content_type)
        if ctype != b"multipart/form-data" or params.get(b"charset") not in CHARSETS:
            return None
        boundary = params.get(b"boundary", b"")
    return boundary if 0 < len(boundary) <= MAX_BOUNDARY_LENGTH else None


def file_names(disposition: bytes) -> tuple[bytes, bytes] | None:
    """The raw field name and filename of a file part's Content-Disposition, else None."""
    if plain := PLAIN_DISPOSITION.fullmatch(disposition):
        return plain[1], plain[2]
    _, options = parse_options_header(disposition)
    if b"name" not in options or b"filename" not in options:
        return None  # no name (an error) or a text field
    return options[b"name"], options[b"filename"]


def split_files(body: bytes, content_type: str, max_files: int) -> list[FilePart] | None:
    """The file parts in order, or None when the body is not in the plain layout (see above)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    if not body.startswith(b"--" + boundary + b"\r\n"):
        return None
    # After each delimiter: CRLF and a part, or "--" and the end.
    *pieces, last = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if pieces[0] or len(pieces) < 2 or last not in (b"--", b"--\r\n"):
        return None
    if len(pieces) - 1 > max_files:
        return None  # Starlette words the refusal
    parts = []
    for piece in pieces[1:]:
        if not piece.startswith(b"\r\n") or piece.startswith(b"\r\n\r\n"):
            return None
        headers, blank, data = piece[2:].partition(b"\r\n\r\n")
        disposition = _disposition(headers) if blank else None
        names = file_names(disposition) if disposition is not None else None
        if names is None:
            return None  # Starlette's limits and errors for text fields, parts with no name
        parts.append(FilePart(_text(names[0]), _text(names[1]), data))
    return parts
