"""The drawing page (`GET /`): served by the app, and used in a real headless Chromium.

The browser tests start a real `python -m service` process, open the page in Debian's
Chromium driven by Playwright, draw digits with real pointer events (hand-designed strokes,
and strokes traced from real MNIST test digits), upload PNGs through the file picker, and
check the prediction, the error messages and the phone layout. A missing Chromium or
Playwright fails them loudly: CI installs both (see docs/api.md, "Web page").
"""

from __future__ import annotations

import base64
import itertools
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.conftest import REPO_ROOT
from tests.servers import running_service
from tests.uploads import encode, paper, product_photo

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
# Without the background-networking flags Chromium tries to reach Google's services, and on a
# closed network its connections are refused (or hang).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO_ROOT / "docs" / "img" / "web.png"
UPLOAD_LIMIT = 1_000_000  # bytes per file for the test server, so a 413 is cheap to provoke
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 667}


# ------------------------------------------------------------------ the app, without a browser


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the page and static files do not need the models.
    transport = httpx.ASGITransport(app=create_app(Settings(device="cpu")))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.anyio
async def test_page_and_static_files_are_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for needle in ('id="pad"', 'role="img"', 'aria-live="polite"', "/static/app.js"):
        assert needle in r.text
    # Everything the page loads is local: no http(s) URL in any of its files.
    assert (await client.get("/favicon.ico")).headers["content-type"] == "image/svg+xml"
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = await client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "http://" not in r.text and "https://" not in r.text


@pytest.mark.anyio
async def test_page_keeps_the_api_json_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/static/missing.js")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = await client.post("/")
    assert r.status_code == 405 and "error" in r.json()
    r = await client.get("/no/such/route")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]


# ------------------------------------------------------------------ a real server and browser


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {"MNIST_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "MNIST_LOG_LEVEL": "warning"}
    with running_service(env) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is not installed: `pip install playwright` (the browser "
            "tests need it; do not run `playwright install`, they use Debian's Chromium)"
        )
    if not CHROMIUM.exists():
        found = shutil.which("chromium") or "nothing on PATH either"
        pytest.fail(
            f"Chromium not found at {CHROMIUM} ({found}): `apt-get install -y chromium "
            "chromium-driver`, or set CHROMIUM_PATH"
        )
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, server: str, init: str | None = None, **context_args):
    context = browser.new_context(base_url=server, **context_args)
    context.set_default_timeout(10_000)
    page = context.new_page()
    if init:
        page.add_init_script(init)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.goto("/")
    wait_for(page, "() => document.querySelectorAll('#model option').length > 0")
    return context, page, problems


@pytest.fixture
def desktop(browser, server):
    context, page, problems = open_page(browser, server, viewport=DESKTOP)
    yield page
    context.close()
    # Errors the tests provoke on purpose (HTTP 4xx, a cut network) are logged as console
    # errors by Chromium; anything else is a bug in the page.
    unexpected = [p for p in problems if "Failed to load resource" not in p]
    assert not unexpected, unexpected


SETTLED = """() => document.getElementById('app').dataset.pending === '0'
    && document.getElementById('digit').dataset.version
       === document.getElementById('pad').dataset.version"""


def wait_for(page, predicate: str, timeout: float = 10) -> None:
    """Poll a JS predicate with page.evaluate (page.wait_for_function evaluates strings with
    eval, which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        page.wait_for_timeout(25)


def settle(page) -> None:
    """Wait until the page shows the answer to its current input, with nothing pending."""
    wait_for(page, SETTLED)


def shown(page) -> str:
    settle(page)
    return page.locator("#digit").inner_text().strip()


def message(page) -> str:
    settle(page)
    return page.locator("#message").inner_text().strip()


# ------------------------------------------------------------------ strokes


Stroke = list[tuple[float, float]]  # points in canvas units: 0..1 across, 0..1 down


def draw(page, strokes: list[Stroke]) -> None:
    """Draw with the mouse: press, move along each stroke, release."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()


def line(*corners: tuple[float, float], step: float = 0.04) -> Stroke:
    """A polyline through `corners`, with points every `step` (pointer moves are sampled)."""
    points = [corners[0]]
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        n = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / step))
        points += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(1, n + 1)]
    return points


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 36) -> Stroke:
    return [
        (cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n))
        for i in range(n + 1)
    ]


HAND_DRAWN = {
    "1": [line((0.47, 0.18), (0.53, 0.84))],
    "0": [ellipse(0.5, 0.5, 0.22, 0.33)],
    "7": [line((0.24, 0.2), (0.76, 0.2), (0.44, 0.84))],
}


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Thin a binary image to 1-pixel-wide lines (Zhang and Suen's two-step thinning)."""
    img = np.pad(mask.astype(bool), 1)
    while True:
        changed = False
        for step in (0, 1):
            # Neighbours clockwise from north: p2 (N), p3 (NE), ..., p9 (NW).
            c = img[1:-1, 1:-1]
            p = [
                img[:-2, 1:-1],
                img[:-2, 2:],
                img[1:-1, 2:],
                img[2:, 2:],
                img[2:, 1:-1],
                img[2:, :-2],
                img[1:-1, :-2],
                img[:-2, :-2],
            ]
            count = sum(q.astype(int) for q in p)
            crossings = sum((~p[i] & p[(i + 1) % 8]).astype(int) for i in range(8))
            n, e, s, w = p[0], p[2], p[4], p[6]
            # The first pass peels south and east edges, the second north and west ones.
            keep = ((n & e & s) | (e & s & w)) if step == 0 else ((n & e & w) | (n & s & w))
            remove = c & (count >= 2) & (count <= 6) & (crossings == 1) & ~keep
            if remove.any():
                img[1:-1, 1:-1] = c & ~remove
                changed = True
        if not changed:
            return img[1:-1, 1:-1]


def trace(digit: np.ndarray, scale: int = 3) -> list[Stroke]:
    """Pen strokes along the centre lines of an MNIST digit (28x28, white ink on black)."""
    big = np.asarray(
        Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    )
    lines = skeleton(big > 110)
    pixels = {tuple(map(int, rc)) for rc in np.argwhere(lines)}

    def neighbours(rc: tuple[int, int]) -> list[tuple[int, int]]:
        r, c = rc
        return [
            (r + dr, c + dc)
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if (dr or dc) and (r + dr, c + dc) in pixels
        ]

    def corner_cut(a: tuple[int, int], b: tuple[int, int]) -> bool:
        # A diagonal step beside an L of two straight ones: keep the L, so lines stay lines
        # and do not become chains of little triangles.
        return a[0] != b[0] and a[1] != b[1] and ((a[0], b[1]) in pixels or (b[0], a[1]) in pixels)

    unused = {frozenset((a, b)) for a in pixels for b in neighbours(a) if not corner_cut(a, b)}

    def free(rc: tuple[int, int]) -> list[tuple[int, int]]:
        return [b for b in neighbours(rc) if frozenset((rc, b)) in unused]

    strokes: list[Stroke] = []
    while unused:
        # Start at a line's end where there is one, so each stroke runs end to end.
        ends = [rc for rc in sorted(pixels) if len(free(rc)) == 1]
        here = ends[0] if ends else min(next(iter(unused)))
        path = [here]
        heading = (0.0, 0.0)
        while options := free(here):
            # Go on as straight as possible (the largest dot product with the last step).
            nxt = max(
                options, key=lambda b: (b[0] - here[0]) * heading[0] + (b[1] - here[1]) * heading[1]
            )
            unused.discard(frozenset((here, nxt)))
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            path.append(here)
        # The 28x28 field fills the canvas less a margin; (row, col) -> (x, y).
        side = 28 * scale
        points = [(0.05 + 0.9 * (c + 0.5) / side, 0.05 + 0.9 * (r + 0.5) / side) for r, c in path]
        strokes.append(thin_out(points))
    return strokes


def thin_out(points: Stroke, spacing: float = 0.035) -> Stroke:
    """Keep a point every `spacing` along the stroke (and its end): a pointer reports about
    that often, and each move costs the browser a frame."""
    kept = [points[0]]
    for point in points[1:-1]:
        if math.dist(point, kept[-1]) >= spacing:
            kept.append(point)
    return [*kept, points[-1]] if len(points) > 1 else kept


@pytest.fixture(scope="module")
def first_of_each_class(mnist_test) -> dict[int, np.ndarray]:
    images, labels = mnist_test
    return {d: images[int(np.flatnonzero(labels == d)[0])] for d in range(10)}


def png(img: Image.Image) -> dict:
    return {"name": "digit.png", "mimeType": "image/png", "buffer": encode(img, "PNG")}


# ------------------------------------------------------------------ the browser tests


@pytest.mark.slow
def test_hand_drawn_digits_are_read_live(desktop) -> None:
    for expected, strokes in HAND_DRAWN.items():
        desktop.click("#clear")
        draw(desktop, strokes)
        assert shown(desktop) == expected, f"drew a {expected}"
        bars = desktop.locator("#bars .bar")
        assert bars.count() == 10
        assert bars.nth(int(expected)).get_attribute("class") == "bar best"
        # The 28x28 input the model saw is drawn: ink (white) in the middle, black edges.
        corner, centre = desktop.evaluate(
            "() => { const c = document.getElementById('seen').getContext('2d');"
            " const d = c.getImageData(0, 0, 28, 28).data;"
            " let s = 0; for (let y = 8; y < 20; y++) for (let x = 8; x < 20; x++)"
            " s = Math.max(s, d[4 * (28 * y + x)]); return [d[0], s]; }"
        )
        assert corner == 0 and centre > 200


@pytest.mark.slow
def test_real_mnist_digits_traced_on_the_canvas(desktop, first_of_each_class, tmp_path) -> None:
    """Strokes along the centre lines of real MNIST test digits, one of each class."""
    wrong = {}
    for label, digit in first_of_each_class.items():
        desktop.click("#clear")
        draw(desktop, trace(digit))
        got = shown(desktop)
        if got != str(label):
            wrong[label] = got
    assert not wrong, f"traced digit -> shown prediction: {wrong}"
    # The page as people see it, with the last digit drawn: for the README.
    desktop.screenshot(path=str(tmp_path / "web.png"))
    if os.environ.get("UPDATE_SCREENSHOT"):  # refresh the README's picture on request only
        desktop.screenshot(path=str(SCREENSHOT))


@pytest.mark.slow
def test_upload_preview_and_friendly_errors(desktop, mnist_test) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(7)
    # A real MNIST test digit as dark ink on light paper, through the file picker.
    for i in (0, 1):
        desktop.set_input_files("#file", png(paper(images[i], rng)))
        assert shown(desktop) == str(labels[i])
        preview = desktop.locator("#upload-preview")
        assert preview.is_visible()
        assert desktop.evaluate("document.getElementById('upload-preview').naturalWidth") > 0

    # Dropped on the canvas (a drop event carrying the file, as the browser makes one).
    data = base64.b64encode(encode(paper(images[2], rng), "PNG")).decode()
    desktop.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
            const pad = document.getElementById('pad');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                pad.dispatchEvent(new DragEvent(type, { dataTransfer: files, bubbles: true }));
            }
        }""",
        data,
    )
    assert shown(desktop) == str(labels[2])
    assert desktop.locator("#upload-caption").inner_text() == "Uploaded: dropped.png"
    assert not desktop.locator("#drop.dragging").count()

    # A blank sheet: the API's 422 "no digit found" becomes a friendly sentence.
    desktop.set_input_files("#file", png(Image.new("L", (200, 200), 255)))
    assert message(desktop).startswith("No digit found in that image")
    assert desktop.locator("#digit").inner_text() == "?"

    # Drawing again replaces the upload; an empty canvas asked explicitly gets the same 422.
    desktop.click("#clear")
    assert not desktop.locator("#upload").is_visible()
    desktop.click("#predict")
    assert message(desktop).startswith("No digit found. Draw one digit")
    assert "error" in (desktop.locator("#message").get_attribute("class") or "")

    # Over the upload limit: 413, said so.
    noise = Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8))
    desktop.set_input_files("#file", png(noise))
    assert "too large" in message(desktop)

    # The service unreachable: not swallowed either.
    desktop.route("**/predict*", lambda route: route.abort("connectionrefused"))
    desktop.click("#clear")
    draw(desktop, HAND_DRAWN["1"])
    assert message(desktop).startswith("Can’t reach the service")
    desktop.unroute("**/predict*")
    desktop.click("#predict")
    assert shown(desktop) == "1"


@pytest.mark.slow
def test_fashion_model_takes_uploads_and_names_its_classes(desktop, fashion_test) -> None:
    images, labels = fashion_test
    options = desktop.locator("#model option").all_inner_texts()
    assert any(o.startswith("fashion") and "on Fashion-MNIST test" in o for o in options)
    desktop.select_option("#model", "fashion")
    names = desktop.locator("#bars .bar-digit").all_inner_texts()
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"
    # No drawing for clothes: the page says to upload, and sends nothing.
    draw(desktop, HAND_DRAWN["1"])
    assert "upload one" in message(desktop)
    assert desktop.locator("#digit").inner_text() == "?"
    rng = np.random.default_rng(5)
    for cls in (1, 8):  # a trouser and a bag, as shop photos through the file picker
        i = int(np.flatnonzero(labels == cls)[0])
        desktop.set_input_files("#file", png(product_photo(images[i], rng)))
        assert shown(desktop) == names[cls]
        assert desktop.locator("#bars .bar").nth(cls).get_attribute("class") == "bar best"
        assert message(desktop) == f"Looks like: {names[cls]}."
    # Back to a digit model: digits on the bars, drawing works again.
    desktop.select_option("#model", "cnn")
    assert desktop.locator("#bars .bar-digit").all_inner_texts() == [str(d) for d in range(10)]
    desktop.click("#clear")
    draw(desktop, HAND_DRAWN["7"])
    assert shown(desktop) == "7"


# Counts the page's /predict requests and how many run at once; each takes 400 ms more here,
# so the drawing changes while one is running.
SLOW_PREDICT = """
window.predicts = { sent: 0, running: 0, most: 0 };
const realFetch = window.fetch.bind(window);
window.fetch = async (url, options) => {
  if (!String(url).startsWith('/predict')) return realFetch(url, options);
  const p = window.predicts;
  p.sent += 1; p.running += 1; p.most = Math.max(p.most, p.running);
  try {
    await new Promise((resolve) => setTimeout(resolve, 400));
    return await realFetch(url, options);
  } finally {
    p.running -= 1;
  }
};
"""


@pytest.mark.slow
def test_live_prediction_sends_one_request_at_a_time(browser, server) -> None:
    context, page, problems = open_page(browser, server, viewport=DESKTOP, init=SLOW_PREDICT)
    try:
        box = page.locator("#pad").bounding_box()
        assert box is not None
        at = lambda x, y: (box["x"] + x * box["width"], box["y"] + y * box["height"])  # noqa: E731
        # A 7 drawn slowly: a pause longer than the debounce at each corner, while the last
        # request is still running.
        page.mouse.move(*at(0.24, 0.2))
        page.mouse.down()
        for corner in ((0.5, 0.2), (0.76, 0.2), (0.6, 0.5), (0.44, 0.84)):
            page.mouse.move(*at(*corner), steps=4)
            page.wait_for_timeout(300)
        page.mouse.up()
        assert shown(page) == "7"
        counts = page.evaluate("window.predicts")
        assert counts["most"] == 1, counts  # never two at once
        assert 2 <= counts["sent"] <= 5, counts  # live while drawing, debounced, queued
    finally:
        context.close()
    assert not problems, problems


@pytest.mark.slow
def test_asks_for_an_api_key_and_waits_out_a_rate_limit(browser, server) -> None:
    """With keys on (MNIST_API_KEYS) the page and its files stay open, the API answers 401
    without a key and 403 with a wrong one; 429 comes with Retry-After. Played here by routes
    in front of the real server."""
    context = browser.new_context(base_url=server, viewport=DESKTOP)
    context.set_default_timeout(10_000)

    def guard(route) -> None:
        key = route.request.headers.get("x-api-key")
        if key == "s3cret":
            route.continue_()
        elif key is None:
            route.fulfill(status=401, json={"error": "missing API key: send it in X-API-Key"})
        else:
            route.fulfill(status=403, json={"error": "invalid API key"})

    context.route("**/models", guard)
    context.route("**/predict*", guard)
    try:
        page = context.new_page()
        page.goto("/")
        wait_for(page, "() => !document.getElementById('key-form').hidden")
        assert page.locator("#message").inner_text().startswith("This service needs an API key")
        assert page.evaluate("document.activeElement.id") == "api-key"

        page.fill("#api-key", "wrong")
        page.press("#api-key", "Enter")
        wait_for(page, "() => /refused/.test(document.getElementById('message').textContent)")
        page.fill("#api-key", "s3cret")
        page.click("#key-form button")
        wait_for(page, "() => document.querySelectorAll('#model option').length > 0")
        assert page.locator("#key-form").is_hidden()

        # One 429 with Retry-After: 1, then the real answers: the page tries again by itself.
        limited = []

        def rate_limit_once(route) -> None:
            if limited:
                route.fallback()
            else:
                limited.append(route.request.url)
                route.fulfill(
                    status=429,
                    headers={"Retry-After": "1"},
                    json={"error": "rate limit of 5 per 1 second exceeded; retry in 1 s"},
                )

        page.route("**/predict*", rate_limit_once)
        draw(page, HAND_DRAWN["1"])
        wait_for(
            page, "() => /trying again in 1 s/.test(document.getElementById('message').textContent)"
        )
        assert shown(page) == "1" and limited

        page.reload()  # the key lasts for the tab's session
        wait_for(page, "() => document.querySelectorAll('#model option').length > 0")
        assert page.locator("#key-form").is_hidden()
    finally:
        context.close()


@pytest.mark.slow
def test_buttons_are_keyboard_reachable_with_visible_focus(desktop) -> None:
    reached = []
    for _ in range(6):
        desktop.keyboard.press("Tab")
        focused = desktop.evaluate(
            "() => { const e = document.activeElement; const s = getComputedStyle(e);"
            " return [e.id, s.outlineStyle, s.outlineWidth]; }"
        )
        reached.append(focused[0])
        if focused[0] in ("clear", "predict", "pick", "model"):
            assert focused[1] != "none" and focused[2] != "0px", focused
    expected = {"clear", "predict", "pick"}
    if desktop.locator("#model option").count() > 1:  # the selector shows with 2+ models
        expected.add("model")
    assert expected <= set(reached), reached
    desktop.focus("#predict")
    desktop.keyboard.press("Enter")
    assert message(desktop).startswith("No digit found")
    assert desktop.get_attribute("#pad", "aria-label")
    assert desktop.locator("label[for=model]").inner_text() == "Model"


@pytest.mark.slow
def test_phone_layout_and_touch_drawing(browser, server, tmp_path) -> None:
    context, page, problems = open_page(
        browser, server, viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=2
    )
    try:
        box = page.locator("#pad").bounding_box()
        assert box is not None and box["width"] >= 280 and box["width"] == box["height"]
        # The whole canvas is on the first screen, and nothing scrolls sideways.
        assert box["x"] >= 0 and box["y"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
        assert box["y"] + box["height"] <= PHONE["height"]
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        # ... and so is the predicted digit, under it: no scrolling to see the answer.
        digit = page.locator("#digit").bounding_box()
        assert digit is not None and digit["y"] + digit["height"] <= PHONE["height"], digit
        buttons = [page.locator(f"#{b}").bounding_box() for b in ("clear", "predict", "pick")]
        assert len({round(b["y"]) for b in buttons if b}) == 1, "the buttons share one row"
        assert (
            page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"
        )

        # A finger draws a 7 (touch events -> pointer events of type "touch").
        cdp = context.new_cdp_session(page)
        points = [
            (box["x"] + x * box["width"], box["y"] + y * box["height"])
            for x, y in HAND_DRAWN["7"][0]
        ]
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]},
        )
        for x, y in points[1:]:
            cdp.send(
                "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]}
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert shown(page) == "7"
        assert page.evaluate("window.scrollY") == 0  # the strokes did not scroll the page
        page.screenshot(path=str(tmp_path / "web-phone.png"))
        page.screenshot(path=str(tmp_path / "web-phone-full.png"), full_page=True)
    finally:
        context.close()
    assert not [p for p in problems if "Failed to load resource" not in p], problems
