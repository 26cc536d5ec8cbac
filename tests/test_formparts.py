"""service/formparts.py against Starlette's multipart parser, on the same bodies: whatever the
quick split accepts, Starlette reads the same way; everything else is left to Starlette."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.formparts import boundary_of, file_names, split_files

MAX_FILES = 257


def starlette_parts(body: bytes, content_type: str) -> list[tuple] | str:
    """(field, filename, data) per part as Starlette reads the body, or its error message."""

    async def parse() -> list[tuple]:
        async def stream():
            yield body

        parser = MultiPartParser(
            Headers({"content-type": content_type}), stream(), max_files=MAX_FILES, max_fields=100
        )
        form = await parser.parse()
        out = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                out.append((name, value.filename, await value.read()))
                await value.close()
            else:
                out.append((name, None, value))
        return out

    try:
        return asyncio.run(parse())
    except MultiPartException as exc:
        return f"error: {exc.message}"


def quick_parts(body: bytes, content_type: str) -> list[tuple] | None:
    parts = split_files(body, content_type, MAX_FILES)
    return None if parts is None else [(p.field, p.filename, p.data) for p in parts]


def encoded(files: list[tuple[str, tuple[str, bytes]]], data: dict | None = None) -> tuple:
    """A body as httpx (like requests and browsers) writes it."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3  # CR, LF and dashes inside the data too

PLAIN = [
    [("file", ("d.png", PNG))],
    [("files", ("a.png", PNG)), ("files", ("b.png", b"")), ("files", ("c.png", b"\r\n--\r\n"))],
    [("file", ('we"ird name.png', PNG))],
    [("file", ("ziffer-fünf.png", PNG))],
    [("image", ("x.png", PNG)), ("file", ("y.png", b"abc"))],
]


@pytest.mark.parametrize("files", PLAIN, ids=range(len(PLAIN)))
def test_plain_bodies_are_split_as_starlette_reads_them(files: list) -> None:
    body, ctype = encoded(files)
    quick = quick_parts(body, ctype)
    assert quick is not None
    assert quick == starlette_parts(body, ctype)
    assert [data for _, _, data in quick] == [content for _, (_, content) in files]


def _body(parts: list[bytes], boundary: bytes = b"bnd") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + (
        b"--" + boundary + b"--\r\n"
    )


FILE = b'Content-Disposition: form-data; name="file"; filename="d.png"\r\n\r\n' + PNG
CTYPE = "multipart/form-data; boundary=bnd"
LEFT_TO_STARLETTE = {
    "text field": (encoded([("file", ("d.png", PNG))], data={"note": "hi"})),
    "no filename": (_body([b'Content-Disposition: form-data; name="file"\r\n\r\nabc']), CTYPE),
    "no name": (_body([b'Content-Disposition: form-data; filename="d.png"\r\n\r\nabc']), CTYPE),
    "no headers": (_body([b"\r\nabc"]), CTYPE),
    "bad header name": (_body([b"Bad Name: x\r\n" + FILE]), CTYPE),
    "preamble": (b"hello\r\n" + _body([FILE]), CTYPE),
    "epilogue": (_body([FILE]) + b"trailing words", CTYPE),
    "no closing delimiter": (_body([FILE])[: -len(b"--bnd--\r\n")], CTYPE),
    "delimiter-like data": (_body([FILE + b"\r\n--bndX more"]), CTYPE),
    "padding after delimiter": (_body([FILE]).replace(b"--bnd\r\n", b"--bnd \r\n", 1), CTYPE),
    "latin-1 charset": (_body([FILE]), CTYPE + "; charset=latin-1"),
    "no boundary": (_body([FILE]), "multipart/form-data"),
    "too many files": (_body([FILE] * (MAX_FILES + 1)), CTYPE),
    "too many headers": (_body([b"X-A: 1\r\n" * 9 + FILE]), CTYPE),
    "boundary over 256": (
        _body([FILE], b"b" * 257),
        "multipart/form-data; boundary=" + "b" * 257,
    ),
}


@pytest.mark.parametrize(("body", "ctype"), LEFT_TO_STARLETTE.values(), ids=list(LEFT_TO_STARLETTE))
def test_anything_else_is_left_to_starlette(body: bytes, ctype: str) -> None:
    assert quick_parts(body, ctype) is None


def test_starlette_refuses_what_the_quick_split_leaves_to_it() -> None:
    # The refusals still happen (Starlette's), not silently accepted here.
    for name in (
        "no name",
        "too many files",
        "bad header name",
        "too many headers",
        "boundary over 256",
    ):
        assert str(starlette_parts(*LEFT_TO_STARLETTE[name])).startswith("error"), name


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(st.sampled_from(["file", "files", "x"]), st.binary(max_size=40)),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 6), st.binary(max_size=6)), max_size=3
    ),
)
def test_any_body_the_quick_split_accepts_reads_the_same_in_starlette(
    files: list, cuts: list
) -> None:
    body, ctype = encoded([(name, ("f.png", data)) for name, data in files])
    for at, drop, insert in cuts:  # damage it: bytes removed and inserted anywhere
        at %= len(body) + 1
        body = body[:at] + insert + body[at + drop :]
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # malformed parts: expected
    quick = quick_parts(body, ctype)
    if quick is not None:
        assert quick == starlette_parts(body, ctype)


@pytest.mark.anyio
async def test_the_service_answers_alike_whichever_parser_reads_the_upload(mnist_test) -> None:
    from PIL import Image

    from tests.conftest import app_client
    from tests.uploads import encode

    images, labels = mnist_test
    uploads = [("files", (f"{i}.png", encode(Image.fromarray(images[i])))) for i in range(3)]
    body, ctype = encoded(uploads)

    async with app_client(models=["mlp"], model="mlp", max_upload_bytes=400) as client:
        plain = await client.post("/predict/batch", content=body, headers={"content-type": ctype})
        streamed = await client.post(
            "/predict/batch", content=chunked_of(body), headers={"content-type": ctype}
        )
        assert plain.status_code == streamed.status_code == 200, plain.text
        assert plain.json() == streamed.json()
        assert [p["digit"] for p in plain.json()["predictions"]] == list(labels[:3])
        # The checks after parsing are the same on both ways in.
        big, big_type = encoded([("file", ("big.png", b"\0" * 401))])
        for content in (big, chunked_of(big)):
            r = await client.post("/predict", content=content, headers={"content-type": big_type})
            assert r.status_code == 413 and "'big.png' exceeds" in r.json()["error"]
        for content in (body, chunked_of(body)):
            r = await client.post("/predict", content=content, headers={"content-type": ctype})
            assert r.status_code == 422 and "missing form field 'file'" in r.json()["error"]


def chunked_of(body: bytes) -> AsyncIterator[bytes]:
    """The body sent in pieces, with no Content-Length: Starlette's streaming parser reads it."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    return chunks()


TRICKY = st.text(alphabet='ab=;" \\\t*:/-.é', max_size=12)


@settings(max_examples=500, deadline=None)
@given(name=TRICKY, filename=TRICKY, boundary=TRICKY, spacing=st.sampled_from(["; ", ";", " ; "]))
def test_headers_read_as_parse_options_header_reads_them(
    name: str, filename: str, boundary: str, spacing: str
) -> None:
    disposition = f'form-data{spacing}name="{name}"{spacing}filename="{filename}"'.encode()
    _, options = parse_options_header(disposition)
    expected = (
        (options[b"name"], options[b"filename"]) if {b"name", b"filename"} <= set(options) else None
    )
    assert file_names(disposition) == expected
    for content_type in (
        f"multipart/form-data{spacing}boundary={boundary}",
        f'multipart/form-data{spacing}boundary="{boundary}"',
    ):
        ctype, params = parse_options_header(content_type)
        value = params.get(b"boundary", b"")
        ok = ctype == b"multipart/form-data" and b"charset" not in params and 0 < len(value) <= 256
        assert boundary_of(content_type) == (value if ok else None), content_type
