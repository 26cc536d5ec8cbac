// The drawing page: draw (or upload) a digit, send it to POST /predict, show what came back.
// Plain browser JavaScript, no libraries, nothing fetched from elsewhere.
"use strict";

(() => {
  const DEBOUNCE_MS = 200;        // quiet time after the last stroke before asking the model
  const TIMEOUT_MS = 15000;       // a request still running after this is abandoned
  const PEN_FRACTION = 0.055;     // line width as a share of the canvas side: a felt pen
  const INK = "#111";
  const PAPER = "#fff";
  const SEND_SIDE = 112;          // the drawing is sent at this size (px), not the canvas's

  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const dropZone = $("drop");
  const fileInput = $("file");
  const modelSelect = $("model");
  const digitEl = $("digit");
  const confidenceEl = $("confidence");
  const messageEl = $("message");
  const barsEl = $("bars");
  const seen = $("seen");
  const seenCtx = seen.getContext("2d");
  const uploadFigure = $("upload");
  const uploadPreview = $("upload-preview");
  const uploadCaption = $("upload-caption");
  const keyForm = $("key-form");
  const keyInput = $("api-key");
  const KEY_STORE = "mnist-api-key";
  const MAX_RETRY_S = 30;         // longest Retry-After (429, 503) the page waits out by itself

  // ------------------------------------------------------------------ state
  // `version` counts changes of the input (each stroke, clear, upload, model change); a
  // response is shown only if it answers the current version, so a late answer for a drawing
  // that was since cleared never overwrites the page.
  let version = 0;
  let source = { kind: "canvas" };   // or { kind: "file", file }
  let hasInk = false;
  let timer = null;
  let inFlight = false;
  let queued = false;
  let previewUrl = null;
  // Only when the service asks for one (401): kept for this tab's session, sent as X-API-Key.
  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  // Each listed model's dataset and class names (from /models): a model that does not read
  // digits (Fashion-MNIST) takes uploads only, and the bars show its class names.
  let modelInfo = {};

  function drawable() {
    const info = modelInfo[modelSelect.value];
    return !info || info.dataset === "mnist";
  }

  function apiHeaders() {
    return apiKey ? { "X-API-Key": apiKey } : {};
  }

  function setPending() {
    app.dataset.pending = timer !== null || inFlight || queued ? "1" : "0";
  }

  function bump() {
    version += 1;
    pad.dataset.version = String(version);
  }

  // ------------------------------------------------------------------ drawing
  function resetPad() {
    ctx.globalCompositeOperation = "source-over";
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineWidth = pad.width * PEN_FRACTION;
    hasInk = false;
  }

  function toCanvas(event) {
    const rect = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * pad.width,
      y: ((event.clientY - rect.top) / rect.height) * pad.height,
    };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function segment(a, b) {
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  let activePointer = null;
  let last = null;

  pad.addEventListener("pointerdown", (event) => {
    if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    if (!drawable()) {
      digitEl.dataset.version = String(version);  // answered: nothing to send
      say("This model reads photos of clothing, shoes and bags: upload one (drawing is for "
        + "the digit models).", false);
      return;
    }
    event.preventDefault();
    activePointer = event.pointerId;
    pad.setPointerCapture(event.pointerId);
    if (source.kind === "file") useCanvas();
    last = toCanvas(event);
    dot(last);
    hasInk = true;
    changed();
  });

  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== activePointer) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) {
      const p = toCanvas(e);
      segment(last, p);
      last = p;
    }
    changed();
  });

  function endStroke(event) {
    if (event.pointerId !== activePointer) return;
    activePointer = null;
    last = null;
    changed();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);

  function useCanvas() {
    source = { kind: "canvas" };
    uploadFigure.hidden = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
  }

  // ------------------------------------------------------------------ requests
  function changed() {
    bump();
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      send();
    }, DEBOUNCE_MS);
    setPending();
  }

  // The drawing as a PNG file, scaled down to SEND_SIDE px first: the service reduces every
  // upload to a 20 px digit, so a 448 px canvas would only cost it decoding time (a 112 px
  // PNG is ~1/15 of the bytes and pixels). The browser's high-quality smoothing averages the
  // strokes as area resizing does. Not canvas.toBlob: Chromium encodes for toBlob in idle time,
  // which a page busy with pointer events or a headless one may not get for up to a second;
  // toDataURL encodes at once (well under a millisecond for this size).
  function canvasBlob() {
    const small = document.createElement("canvas");
    small.width = SEND_SIDE;
    small.height = SEND_SIDE;
    const smallCtx = small.getContext("2d");
    smallCtx.imageSmoothingEnabled = true;
    smallCtx.imageSmoothingQuality = "high";
    smallCtx.drawImage(pad, 0, 0, SEND_SIDE, SEND_SIDE);
    const url = small.toDataURL("image/png");
    const bytes = atob(url.slice(url.indexOf(",") + 1));
    const data = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i += 1) data[i] = bytes.charCodeAt(i);
    return new Blob([data], { type: "image/png" });
  }

  // One request at a time: a change while one runs is sent, once, with the latest input
  // when it returns.
  async function send() {
    if (inFlight) {
      queued = true;
      setPending();
      return;
    }
    inFlight = true;
    setPending();
    const asked = version;
    if (source.kind === "canvas" && !drawable()) {
      inFlight = false;  // nothing to send: this model takes uploads only
      digitEl.dataset.version = String(asked);
      setPending();
      return;
    }
    try {
      const blob = source.kind === "file" ? source.file : canvasBlob();
      const name = source.kind === "file" ? source.file.name || "upload" : "drawing.png";
      const outcome = await predict(blob, name);
      if (asked === version) show(outcome, asked);
    } finally {
      inFlight = false;
      if (queued) {
        queued = false;
        send();
      }
      setPending();
    }
  }

  async function predict(blob, name) {
    const body = new FormData();
    body.append("file", blob, name);
    const params = new URLSearchParams({ include_image: "true" });
    if (modelSelect.value) params.set("model", modelSelect.value);
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), TIMEOUT_MS);
    let response;
    try {
      response = await fetch(`/predict?${params}`, {
        method: "POST",
        body,
        headers: apiHeaders(),
        signal: abort.signal,
      });
    } catch (error) {
      return { error: abort.signal.aborted ? "timeout" : "network", detail: String(error) };
    } finally {
      clearTimeout(timeout);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok || !data || typeof data.class_index !== "number") {
      const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      return {
        error: "http",
        status: response.status,
        detail: data && data.error,
        retryAfter: Number.isFinite(retry) ? retry : null,
      };
    }
    return { data };
  }

  // ------------------------------------------------------------------ showing results
  function friendly(outcome) {
    const detail = outcome.detail ? ` (${outcome.detail})` : "";
    if (outcome.error === "network") {
      return "Can’t reach the service. Check that it is running, then try again.";
    }
    if (outcome.error === "timeout") {
      return "The service took too long to answer. Try again in a moment.";
    }
    const status = outcome.status;
    const text = String(outcome.detail || "");
    if (status === 422 && /no digit/i.test(text)) {
      return source.kind === "file"
        ? "No digit found in that image. Try a picture with one dark digit on light paper."
        : "No digit found. Draw one digit, large, in the middle of the square.";
    }
    if (status === 413) return `That image is too large for the service${detail}. Try a smaller one.`;
    if (status === 415 || status === 422) return `The service could not read that image${detail}.`;
    if (status === 401) return "This service needs an API key: enter it below.";
    if (status === 403) return "The service refused that API key: check it and enter it again.";
    if (status === 404) return `That model is not available${detail}.`;
    if ((status === 429 || status === 503) && waitable(outcome)) {
      return `The service is busy; trying again in ${outcome.retryAfter} s.`;
    }
    if (status === 429) return `Too many requests${detail}. Wait a moment, then try again.`;
    if (status === 503) return "The service is not ready (model loading or busy). Try again soon.";
    if (status >= 500) return "The service hit an internal error. Try again.";
    return `The request failed with status ${status}${detail}.`;
  }

  function waitable(outcome) {
    return outcome.retryAfter !== null && outcome.retryAfter !== undefined
      && outcome.retryAfter <= MAX_RETRY_S;
  }

  function askForKey() {
    keyForm.hidden = false;
    keyInput.focus();
  }

  function say(text, isError) {
    messageEl.textContent = text;
    messageEl.classList.toggle("error", Boolean(isError));
  }

  function buildBars() {
    for (let d = 0; d < 10; d += 1) {
      const li = document.createElement("li");
      li.className = "bar";
      li.innerHTML =
        `<span class="bar-digit">${d}</span>` +
        '<span class="bar-track" aria-hidden="true"><span class="bar-fill"></span></span>' +
        '<span class="bar-value">–</span>';
      barsEl.append(li);
    }
  }

  // The bars' labels and the page's mode for the chosen model.
  function applyModel() {
    const info = modelInfo[modelSelect.value];
    const names = info ? info.class_names : null;
    [...barsEl.children].forEach((li, i) => {
      li.querySelector(".bar-digit").textContent = names ? names[i] : String(i);
    });
    const words = !drawable();
    barsEl.classList.toggle("named", words);
    digitEl.classList.toggle("word", words);
    app.dataset.mode = words ? "upload" : "draw";
    if (words && source.kind === "canvas") {
      resetPad();
      resetResult("Upload a photo to start.");
      digitEl.dataset.version = String(version);
      say("This model reads photos of clothing, shoes and bags: upload one.", false);
    }
  }

  function resetResult(text) {
    digitEl.textContent = "?";
    confidenceEl.textContent = text;
    for (const li of barsEl.children) {
      li.classList.remove("best");
      li.querySelector(".bar-fill").style.width = "0";
      li.querySelector(".bar-value").textContent = "–";
    }
    seenCtx.fillStyle = "#000";
    seenCtx.fillRect(0, 0, 28, 28);
    seen.setAttribute("aria-label", "The 28 by 28 pixel image the model saw: none yet");
  }

  function show(outcome, forVersion) {
    digitEl.dataset.version = String(forVersion);
    if (outcome.error) {
      resetResult("No prediction.");
      say(friendly(outcome), true);
      if (outcome.status === 401 || outcome.status === 403) askForKey();
      if ((outcome.status === 429 || outcome.status === 503) && waitable(outcome)) {
        // Send the same input again once the service says it can take it.
        clearTimeout(timer);
        timer = setTimeout(() => {
          timer = null;
          send();
        }, Math.max(1, outcome.retryAfter) * 1000);
      }
      return;
    }
    const { data } = outcome;
    digitEl.textContent = String(data.label);
    const pct = (p) => {
      if (p < 0.0005) return "0%";
      if (p > 0.9995) return ">99.9%";
      return `${(100 * p).toFixed(1)}%`;
    };
    confidenceEl.textContent = `${pct(data.confidence)} sure · model ${data.model}`;
    data.probabilities.forEach((p, d) => {
      const li = barsEl.children[d];
      li.classList.toggle("best", d === data.class_index);
      li.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
      li.querySelector(".bar-value").textContent = pct(p);
    });
    if (Array.isArray(data.image)) drawSeen(data.image);
    say(typeof data.digit === "number" ? `Looks like a ${data.digit}.` : `Looks like: ${data.label}.`,
      false);
  }

  function drawSeen(rows) {
    const img = seenCtx.createImageData(28, 28);
    rows.forEach((row, y) => {
      row.forEach((v, x) => {
        const i = 4 * (28 * y + x);
        img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
        img.data[i + 3] = 255;
      });
    });
    seenCtx.putImageData(img, 0, 0);
    seen.setAttribute("aria-label", "The 28 by 28 pixel image the model saw, shown enlarged");
  }

  // ------------------------------------------------------------------ buttons and uploads
  $("clear").addEventListener("click", () => {
    useCanvas();
    resetPad();
    bump();
    clearTimeout(timer);
    timer = null;
    setPending();
    resetResult("Draw a digit to start.");
    digitEl.dataset.version = String(version);
    say("Cleared.", false);
  });

  $("predict").addEventListener("click", () => {
    bump();
    clearTimeout(timer);
    timer = null;
    say("Reading…", false);
    send();
  });

  $("pick").addEventListener("click", () => fileInput.click());

  fileInput.addEventListener("change", () => {
    if (fileInput.files && fileInput.files[0]) useFile(fileInput.files[0]);
    fileInput.value = "";
  });

  function useFile(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    source = { kind: "file", file };
    uploadPreview.src = previewUrl;
    uploadPreview.alt = `Uploaded image ${file.name || ""}`.trim();
    uploadCaption.textContent = `Uploaded: ${file.name || "image"}`;
    uploadFigure.hidden = false;
    resetPad();
    say(`Reading ${file.name || "the image"}…`, false);
    changed();
  }

  uploadPreview.addEventListener("error", () => {
    // Formats the browser cannot show (e.g. TIFF) are still sent: only the preview goes.
    if (source.kind === "file") uploadCaption.textContent = "Uploaded (no preview for this format)";
  });

  // Dropping a file anywhere on the page must not navigate away from it.
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (event) => event.preventDefault());
  }
  let dragDepth = 0;
  dropZone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) dropZone.classList.remove("dragging");
  });
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    dropZone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) useFile(file);
    else say("Drop an image file (PNG, JPEG, …).", true);
  });

  modelSelect.addEventListener("change", () => {
    applyModel();
    if (source.kind === "file" || hasInk) changed();
  });

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = keyInput.value.trim();
    if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    else sessionStorage.removeItem(KEY_STORE);
    keyInput.value = "";
    keyForm.hidden = true;
    say(apiKey ? "API key set." : "API key removed.", false);
    loadModels().then(() => {
      if (source.kind === "file" || hasInk) changed();
    });
  });

  async function loadModels() {
    try {
      const response = await fetch("/models", { headers: apiHeaders() });
      if (response.status === 401 || response.status === 403) {
        say(friendly({ error: "http", status: response.status }), true);
        askForKey();
        return;
      }
      if (!response.ok) throw new Error(`status ${response.status}`);
      const data = await response.json();
      modelSelect.replaceChildren();
      modelInfo = {};
      for (const m of data.models) {
        const option = document.createElement("option");
        option.value = m.name;
        const dataset = m.dataset || "mnist";
        modelInfo[m.name] = { dataset, class_names: m.class_names || null };
        const title = dataset === "mnist" ? "MNIST" : "Fashion-MNIST";
        const acc = typeof m.test_accuracy === "number"
          ? ` (${(100 * m.test_accuracy).toFixed(2)}% on ${title} test)` : "";
        option.textContent = `${m.name}${acc}`;
        option.selected = m.name === data.default;
        modelSelect.append(option);
      }
      $("model-field").hidden = data.models.length < 2;
      applyModel();
    } catch (error) {
      say(`Could not list the models (${error.message}); predictions use the default one.`, true);
    }
  }

  buildBars();
  resetPad();
  resetResult("Draw a digit to start.");
  loadModels();
})();
