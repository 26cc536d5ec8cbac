"""Coverage-guided fuzzing of the upload path (`preprocess_upload`) with atheris/libFuzzer.

    python bench/fuzz_decode.py                          # 60 s from a seed corpus of images
    python bench/fuzz_decode.py --seconds 600 --corpus /tmp/corpus
    python bench/fuzz_decode.py --strict                 # known bugs crash the run too

The property is the one of tests/test_properties.py: any bytes give a (28, 28) uint8 digit or
an InputError with a 4xx status. Anything else (another exception, a wrong shape) stops the
run as a crash, with the input written to --artifacts. Pillow's Python decoders and
service.upload are instrumented for coverage; the seed corpus holds small images of every
mode in every format Pillow writes (PNG, JPEG, BMP, GIF, TIFF, WebP), so mutations start from
real structure. Known, reported bugs are counted and printed instead of stopping the run,
unless --strict. Produces: docs/security.md (bugs found: bench/results/fuzz/fuzz.md).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["PIL", "service.upload"]):
    from PIL import Image

    Image.init()  # import every decoder plugin now, inside the instrumented block
    from service.errors import InputError
    from service.upload import preprocess_upload

MAX_PIXELS = 1_000_000
KNOWN: dict[str, int] = {}


# Reported, not yet fixed bugs: (exception type, a function on its traceback) -> description.
# None open; e.g. (ValueError, "_otsu") held the float32-overflow bug until it was fixed.
KNOWN_BUGS: dict[tuple[type[BaseException], str], str] = {}


def known_bug(exc: BaseException) -> str | None:
    """A reported bug that should not stop the exploration (None: not a known one)."""
    functions = []  # every function on the way from the call to the raise
    tb = exc.__traceback__
    while tb is not None:
        functions.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    for (kind, function), name in KNOWN_BUGS.items():
        if isinstance(exc, kind) and function in functions:
            return name
    return None


def make_target(strict: bool, artifacts: Path):
    def test_one_input(data: bytes) -> None:
        try:
            out = preprocess_upload(data, MAX_PIXELS)
        except InputError as exc:
            if not 400 <= exc.status_code < 500:
                raise AssertionError(f"InputError with status {exc.status_code}") from exc
            return
        except Exception as exc:
            name = known_bug(exc)
            if name is None or strict:
                raise
            if name not in KNOWN:
                path = artifacts / f"known-{len(KNOWN)}.bin"
                path.write_bytes(data)
                print(f"\nknown bug hit: {name}; input saved to {path}", flush=True)
            KNOWN[name] = KNOWN.get(name, 0) + 1
            return
        if not (isinstance(out, np.ndarray) and out.shape == (28, 28) and out.dtype == np.uint8):
            raise AssertionError(f"bad output: {type(out)} {getattr(out, 'shape', None)}")

    return test_one_input


def seed_corpus(folder: Path) -> None:
    """Small images of every mode in every format that can hold it: real structure to mutate."""
    rng = np.random.default_rng(0)
    ink = np.zeros((24, 20), dtype=np.uint8)
    ink[4:20, 9:12] = 255  # a "1"
    count = 0
    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK"):
        img = Image.fromarray(ink).convert(mode) if mode != "I;16" else Image.fromarray(ink)
        if mode == "I;16":
            img = img.convert("I").point(lambda v: v * 257).convert("I;16")
        for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"):
            buf = io.BytesIO()
            try:
                img.save(buf, fmt)
            except (OSError, ValueError, KeyError):
                continue
            (folder / f"{mode.replace(';', '_')}.{fmt.lower()}").write_bytes(buf.getvalue())
            count += 1
    noise = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8))
    noise.save(folder / "noise.png")
    print(f"seed corpus: {count + 1} files in {folder}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="libFuzzer -max_total_time")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: a fresh seed one)")
    parser.add_argument("--artifacts", type=Path, help="where crashes go (default: a temp dir)")
    parser.add_argument("--strict", action="store_true", help="known bugs crash the run too")
    args, libfuzzer_args = parser.parse_known_args()

    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="mnist-fuzz-corpus-"))
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        seed_corpus(corpus)
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="mnist-fuzz-artifacts-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"artifacts (crashes) in {artifacts}", flush=True)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={args.seconds}",
        f"-artifact_prefix={artifacts}/",
        "-max_len=65536",
        "-timeout=20",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        *libfuzzer_args,
    ]
    atheris.Setup(argv, make_target(args.strict, artifacts))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
