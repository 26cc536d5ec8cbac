"""The client side of deploy/check_image.sh: real requests to the running image, checked answers.

Standard library only (it runs with the host's python3, outside the image). Test digits come
from the MNIST test set (the IDX files, gzip or not) that the check mounts into the trainer.

    python3 deploy/image_client.py predict URL MNIST_DIR --count 20 --min-accuracy 0.95
    python3 deploy/image_client.py batch URL MNIST_DIR --count 200 --min-accuracy 0.95
    python3 deploy/image_client.py model URL WEIGHTS_FILE [--model cnn]

Each command prints one line of what it saw and exits 1, with the reason, on any mismatch.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import struct
import sys
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path


class CheckFailed(Exception):
    pass


def read_idx(folder: Path, stem: str) -> bytes:
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            raw = path.read_bytes()
            return gzip.decompress(raw) if path.suffix == ".gz" else raw
    raise CheckFailed(f"no {stem}(.gz) in {folder}")


def test_digits(folder: Path, count: int) -> list[tuple[bytes, int]]:
    """The first `count` test images (784 bytes each, 0 = background) with their labels."""
    images = read_idx(folder, "t10k-images-idx3-ubyte")
    labels = read_idx(folder, "t10k-labels-idx1-ubyte")
    magic, n, rows, cols = struct.unpack(">IIII", images[:16])
    if magic != 2051 or (rows, cols) != (28, 28) or n < count:
        raise CheckFailed(f"unexpected images header {magic} {n} {rows}x{cols}")
    size = rows * cols
    return [(images[16 + i * size : 16 + (i + 1) * size], labels[8 + i]) for i in range(count)]


def png(pixels: bytes, scale: int = 4) -> bytes:
    """A grey PNG as a user would draw it: dark ink on white paper, `scale` times larger."""
    side = 28 * scale
    rows = []
    for y in range(side):
        row = pixels[(y // scale) * 28 : (y // scale + 1) * 28]
        rows.append(b"\x00" + bytes(255 - row[x // scale] for x in range(side)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def request(url: str, body: bytes | None = None, content_type: str = "") -> dict:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    if status != 200:
        raise CheckFailed(f"{url} answered {status}: {raw[:300]!r}")
    return json.loads(raw)


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def check_accuracy(what: str, digits: list[int], labels: list[int], minimum: float) -> None:
    right = sum(d == label for d, label in zip(digits, labels, strict=True))
    accuracy = right / len(labels)
    print(f"{what}: {right}/{len(labels)} right ({accuracy:.1%}, at least {minimum:.0%} needed)")
    if accuracy < minimum:
        raise CheckFailed(f"{what}: accuracy {accuracy:.1%} below {minimum:.0%}")


def predict_pngs(args: argparse.Namespace) -> None:
    digits, labels = [], []
    for index, (pixels, label) in enumerate(test_digits(args.mnist_dir, args.count)):
        body, content_type = multipart("file", f"digit-{index}.png", png(pixels))
        answer = request(f"{args.url}/predict", body, content_type)
        if not 0 <= answer["digit"] <= 9 or abs(sum(answer["probabilities"]) - 1) > 1e-3:
            raise CheckFailed(f"malformed answer {answer}")
        digits.append(answer["digit"])
        labels.append(label)
    check_accuracy(f"POST /predict, {args.count} PNG uploads", digits, labels, args.min_accuracy)


def predict_batch(args: argparse.Namespace) -> None:
    samples = test_digits(args.mnist_dir, args.count)
    body = json.dumps({"images": [list(pixels) for pixels, _ in samples]}).encode()
    answer = request(f"{args.url}/predict/batch", body, "application/json")
    predictions = answer["predictions"]
    if len(predictions) != len(samples):
        raise CheckFailed(f"{len(predictions)} predictions for {len(samples)} images")
    check_accuracy(
        f"POST /predict/batch, {args.count} pixel arrays",
        [p["digit"] for p in predictions],
        [label for _, label in samples],
        args.min_accuracy,
    )


def served_model(args: argparse.Namespace) -> None:
    """The service loaded exactly this weights file (the SHA-256 it reports)."""
    expected = hashlib.sha256(args.weights.read_bytes()).hexdigest()
    models = {m["name"]: m for m in request(f"{args.url}/models")["models"]}
    if args.model not in models:
        raise CheckFailed(f"model {args.model} not served (serving {sorted(models)})")
    info = models[args.model]
    print(
        f"GET /models: {args.model} sha256 {info['sha256'][:12]}..., file {expected[:12]}..., "
        f"on {info['device']}, torch {info['torch_version']}"
    )
    if info["sha256"] != expected:
        raise CheckFailed(f"served {info['sha256']}, the file {args.weights} is {expected}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func in (("predict", predict_pngs), ("batch", predict_batch)):
        sub = commands.add_parser(name)
        sub.add_argument("url")
        sub.add_argument("mnist_dir", type=Path)
        sub.add_argument("--count", type=int, default=20)
        sub.add_argument("--min-accuracy", type=float, default=0.95)
        sub.set_defaults(func=func)
    sub = commands.add_parser("model")
    sub.add_argument("url")
    sub.add_argument("weights", type=Path)
    sub.add_argument("--model", default="cnn")
    sub.set_defaults(func=served_model)
    args = parser.parse_args()
    try:
        args.func(args)
    except (CheckFailed, OSError, KeyError, ValueError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
