// segflow web page: pick or drop an image, get the predicted mask from POST /predict, show it over
// the image with a legend of class areas, download the class-id PNG.
//
// No framework, no build step, no network beyond this server: the page is served from the package
// and works offline. One prediction call per image: the class-id PNG is decoded in a canvas
// (R channel = class id) and every number on the page is computed from it.
//
// document.body.dataset.state is "loading" | "ready" | "busy" | "done" | "error" (tests wait on it).

const $ = (id) => document.getElementById(id);

const el = {
  model: $("model"),
  file: $("file"),
  opacity: $("opacity"),
  opacityValue: $("opacity-value"),
  apiKey: $("api-key"),
  keyBox: document.querySelector("details.key"),
  busy: $("busy"),
  statusText: $("status-text"),
  error: $("error"),
  view: document.querySelector("figure.view"),
  overlay: $("overlay"),
  placeholder: $("placeholder"),
  caption: $("caption"),
  legend: $("legend"),
  download: $("download"),
};

// Everything the page knows, in one place (no other module-level mutable state).
const page = {
  info: null, // GET /info
  infoLoading: null, // the promise of a GET /info in flight
  controller: null, // AbortController of the prediction in flight
  maskUrl: null, // object URL of the downloadable class-id PNG
  // Class ids left unpainted. 0 is the background, as in segflow's own overlays; the legend's
  // check boxes change this.
  hidden: new Set([0]),
  result: null, // {mask: ImageBitmap, image: ImageBitmap | null, width, height, name, seconds}
  layers: null, // display-size canvases: {image, ids: Uint8Array, colour, width, height}
};

// ---------------------------------------------------------------------------------------------
// Small helpers

function setState(state) {
  document.body.dataset.state = state;
  const busy = state === "busy";
  el.busy.hidden = !busy;
  el.view.setAttribute("aria-busy", String(busy));
}

function setStatus(text) {
  el.statusText.textContent = text;
}

function showError(message) {
  el.error.textContent = message;
  el.error.hidden = false;
  setState("error");
}

function clearError() {
  el.error.textContent = "";
  el.error.hidden = true;
}

function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${n} B`;
}

function formatPercent(part, total) {
  if (!total) return "–";
  const pct = (100 * part) / total;
  if (pct > 0 && pct < 0.1) return "<0.1%";
  return `${pct.toFixed(1)}%`;
}

function stemOf(name) {
  const base = (name || "").split(/[\\/]/).pop();
  const dot = base.lastIndexOf(".");
  const stem = dot > 0 ? base.slice(0, dot) : base;
  return stem || "image";
}

function headers() {
  const key = el.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

function context2d(canvas, readBack = false) {
  return canvas.getContext("2d", { willReadFrequently: readBack });
}

// The message of a failed response: the server's JSON `detail` when there is one.
async function errorMessage(resp) {
  let detail = null;
  try {
    const body = await resp.clone().json();
    detail = body && (body.detail ?? body.message ?? body.error);
  } catch {
    // not JSON: fall back to the text or the status line
  }
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: [...], msg: "..."}]
    detail = detail
      .map((d) => (d && d.msg ? [(d.loc || []).join("."), d.msg].filter(Boolean).join(": ") : JSON.stringify(d)))
      .join("; ");
  } else if (detail && typeof detail === "object") {
    detail = JSON.stringify(detail);
  }
  if (!detail) {
    const text = (await resp.text().catch(() => "")).trim();
    detail = text && text.length <= 300 && !text.startsWith("<") ? text : "";
  }
  let message = detail || `${resp.status} ${resp.statusText || "error"}`.trim();
  if (resp.status === 401 || resp.status === 403) {
    message += " Enter the server's API key above.";
    el.keyBox.open = true;
  }
  const retry = resp.headers.get("Retry-After");
  if (resp.status === 503 && retry) message += ` Try again in ${retry} s.`;
  return message;
}

// ---------------------------------------------------------------------------------------------
// Model information and the legend

async function loadInfo() {
  if (page.info) return page.info;
  if (!page.infoLoading) {
    page.infoLoading = (async () => {
      let resp;
      try {
        resp = await fetch("/info", { headers: headers(), cache: "no-store" });
      } catch {
        throw new Error("Could not reach the server. Is `segflow serve` still running?");
      }
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const info = await resp.json();
      if (!info || !Array.isArray(info.classes)) throw new Error("The server's /info has no class list.");
      page.info = info;
      describeModel(info);
      buildLegend(info.classes);
      return info;
    })().finally(() => {
      page.infoLoading = null;
    });
  }
  return page.infoLoading;
}

function describeModel(info) {
  const parts = [
    info.name,
    info.task,
    `${info.classes.length} classes`,
    info.backend && `${info.backend} backend`,
    info.version && `segflow ${info.version}`,
  ].filter(Boolean);
  el.model.textContent = parts.join(" · ");
  if (info.name) document.title = `${info.name} – segflow`;
}

function buildLegend(classes) {
  el.legend.replaceChildren();
  for (const c of classes) {
    const li = document.createElement("li");
    li.dataset.classId = String(c.id);
    li.dataset.pixels = "";

    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !page.hidden.has(c.id);
    box.setAttribute("aria-label", `Show ${c.name}`);
    box.addEventListener("change", () => {
      if (box.checked) page.hidden.delete(c.id);
      else page.hidden.add(c.id);
      paintColours();
      compose();
    });

    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const [r, g, b] = c.color || [128, 128, 128];
    swatch.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
    swatch.setAttribute("aria-hidden", "true");

    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;

    label.append(box, swatch, name);

    const count = document.createElement("span");
    count.className = "count";
    const pct = document.createElement("span");
    pct.className = "pct";

    li.append(label, count, pct);
    el.legend.append(li);
  }
}

function updateLegend(counts, total) {
  let known = 0;
  for (const li of el.legend.querySelectorAll("li[data-class-id]")) {
    const id = Number(li.dataset.classId);
    const n = counts ? counts[id] || 0 : null;
    li.dataset.pixels = n === null ? "" : String(n);
    li.querySelector(".count").textContent = n === null ? "" : `${n.toLocaleString("en")} px`;
    li.querySelector(".pct").textContent = n === null ? "" : formatPercent(n, total);
    li.classList.toggle("absent", n === 0);
    if (n) known += n;
  }
  el.legend.querySelector("li.unknown")?.remove();
  if (counts && known < total) {
    // ids the server did not describe (e.g. 255 = ignore): say so rather than hide them
    const li = document.createElement("li");
    li.className = "unknown";
    li.textContent = `${(total - known).toLocaleString("en")} px with other values (${formatPercent(total - known, total)})`;
    el.legend.append(li);
  }
}

// ---------------------------------------------------------------------------------------------
// Prediction

async function predict(file) {
  page.controller?.abort();
  const controller = new AbortController();
  page.controller = controller;

  clearError();
  resetResult();
  setState("busy");
  setStatus(`Predicting ${file.name || "the image"} (${formatBytes(file.size)})…`);
  const started = performance.now();

  try {
    const info = await loadInfo();
    const limit = info.limits && info.limits.max_upload_bytes;
    if (limit && file.size > limit) {
      throw new Error(`The file is ${formatBytes(file.size)}; this server accepts up to ${formatBytes(limit)}.`);
    }

    const form = new FormData();
    form.append("image", file, file.name || "image.png");
    // The browser's own decode of the image, for display only, runs while the server works.
    const imageDecode = createImageBitmap(file).catch(() => null);

    let resp;
    try {
      resp = await fetch("/predict?format=png", {
        method: "POST",
        body: form,
        headers: headers(),
        signal: controller.signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error("Could not reach the server. Is `segflow serve` still running?");
    }
    if (!resp.ok) throw new Error(await errorMessage(resp));

    const maskBlob = await resp.blob();
    let mask;
    try {
      mask = await createImageBitmap(maskBlob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch {
      throw new Error("The server's answer is not a readable PNG mask.");
    }
    const image = await imageDecode;
    if (controller.signal.aborted) return;

    const counts = countClasses(mask);
    const total = mask.width * mask.height;
    const seconds = (performance.now() - started) / 1000;
    page.result = { mask, image, width: mask.width, height: mask.height, name: file.name, seconds };

    updateLegend(counts, total);
    offerDownload(maskBlob, stemOf(file.name));
    describeResult(image);
    renderLayers();
    setStatus(`Done: ${file.name || "image"}.`);
    setState("done");
  } catch (err) {
    if (err && err.name === "AbortError") return; // a newer image replaced this one
    setStatus("Prediction failed.");
    showError(err && err.message ? err.message : String(err));
  } finally {
    if (page.controller === controller) page.controller = null;
  }
}

function resetResult() {
  page.result?.mask?.close();
  page.result?.image?.close();
  page.result = null;
  page.layers = null;
  if (page.maskUrl) URL.revokeObjectURL(page.maskUrl);
  page.maskUrl = null;
  el.download.hidden = true;
  el.download.removeAttribute("href");
  el.overlay.width = 0;
  el.overlay.height = 0;
  el.overlay.hidden = true;
  el.placeholder.hidden = false;
  el.caption.textContent = "";
  updateLegend(null, 0);
}

// Pixel count per class id over the full-resolution mask, read in strips to bound memory.
function countClasses(mask) {
  const { width, height } = mask;
  const counts = new Float64Array(256);
  const rows = Math.max(1, Math.floor(4_000_000 / width));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = Math.min(rows, height);
  const ctx = context2d(canvas, true);
  ctx.imageSmoothingEnabled = false;
  for (let y = 0; y < height; y += rows) {
    const h = Math.min(rows, height - y);
    ctx.clearRect(0, 0, width, canvas.height);
    ctx.drawImage(mask, 0, y, width, h, 0, 0, width, h);
    const data = ctx.getImageData(0, 0, width, h).data;
    for (let i = 0; i < data.length; i += 4) counts[data[i]] += 1;
  }
  return counts;
}

function offerDownload(blob, stem) {
  page.maskUrl = URL.createObjectURL(blob);
  el.download.href = page.maskUrl;
  el.download.download = `${stem}_mask.png`;
  el.download.textContent = `Download ${stem}_mask.png`;
  el.download.hidden = false;
}

function describeResult(image) {
  const r = page.result;
  let text = `${r.width} × ${r.height} px · predicted in ${r.seconds.toFixed(2)} s`;
  if (!image) text += " · this browser cannot display the image itself, so only the mask is shown";
  else if (image.width !== r.width || image.height !== r.height) {
    text += ` · the image decodes here as ${image.width} × ${image.height} px and is stretched to the mask`;
  }
  el.caption.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Drawing: the image and the class ids are resampled once to the display size; the opacity slider
// and the legend's check boxes only recolour and recompose.

function displaySize(width, height) {
  // As wide as the panel, and short enough that the whole image shows below the controls.
  const maxWidth = Math.max(120, el.view.clientWidth);
  const top = el.view.getBoundingClientRect().top + window.scrollY;
  const maxHeight = Math.max(240, window.innerHeight - top - 72);
  const scale = Math.min(maxWidth / width, maxHeight / height, 8);
  return { cssWidth: Math.max(1, Math.round(width * scale)), cssHeight: Math.max(1, Math.round(height * scale)) };
}

function renderLayers() {
  const r = page.result;
  if (!r) return;
  const { cssWidth, cssHeight } = displaySize(r.width, r.height);
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(cssWidth * dpr));
  const height = Math.max(1, Math.round(cssHeight * dpr));

  const image = document.createElement("canvas");
  image.width = width;
  image.height = height;
  const ictx = context2d(image);
  if (r.image) {
    ictx.imageSmoothingQuality = "high";
    ictx.drawImage(r.image, 0, 0, width, height);
  } else {
    ictx.fillStyle = "#8a8f98";
    ictx.fillRect(0, 0, width, height);
  }

  // Nearest-neighbour resampling keeps every display pixel a real class id.
  const idsCanvas = document.createElement("canvas");
  idsCanvas.width = width;
  idsCanvas.height = height;
  const mctx = context2d(idsCanvas, true);
  mctx.imageSmoothingEnabled = false;
  mctx.drawImage(r.mask, 0, 0, width, height);
  const rgba = mctx.getImageData(0, 0, width, height).data;
  const ids = new Uint8Array(width * height);
  for (let i = 0, p = 0; p < ids.length; i += 4, p += 1) ids[p] = rgba[i];

  const colour = document.createElement("canvas");
  colour.width = width;
  colour.height = height;

  page.layers = { image, ids, colour, width, height };
  el.overlay.width = width;
  el.overlay.height = height;
  el.overlay.style.width = `${cssWidth}px`;
  el.overlay.style.height = `${cssHeight}px`;
  el.overlay.hidden = false;
  el.placeholder.hidden = true;
  paintColours();
  compose();
}

function paintColours() {
  const layers = page.layers;
  if (!layers || !page.info) return;
  const lut = new Uint8ClampedArray(256 * 4); // RGBA per id; unknown and hidden ids stay clear
  for (const c of page.info.classes) {
    if (page.hidden.has(c.id) || c.id < 0 || c.id > 255) continue;
    const [r, g, b] = c.color || [128, 128, 128];
    lut.set([r, g, b, 255], c.id * 4);
  }
  const ctx = context2d(layers.colour);
  const out = ctx.createImageData(layers.width, layers.height);
  const px = out.data;
  const ids = layers.ids;
  for (let p = 0, i = 0; p < ids.length; p += 1, i += 4) {
    const k = ids[p] * 4;
    px[i] = lut[k];
    px[i + 1] = lut[k + 1];
    px[i + 2] = lut[k + 2];
    px[i + 3] = lut[k + 3];
  }
  ctx.putImageData(out, 0, 0);
}

function compose() {
  const layers = page.layers;
  if (!layers) return;
  const ctx = context2d(el.overlay, true);
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, layers.width, layers.height);
  ctx.drawImage(layers.image, 0, 0);
  ctx.globalAlpha = Number(el.opacity.value) / 100;
  ctx.drawImage(layers.colour, 0, 0);
  ctx.globalAlpha = 1;
}

// ---------------------------------------------------------------------------------------------
// Wiring

function takeFile(file) {
  if (file) predict(file);
}

el.file.addEventListener("change", () => {
  const file = el.file.files && el.file.files[0];
  takeFile(file);
  el.file.value = ""; // choosing the same file again predicts again
});

el.opacity.addEventListener("input", () => {
  el.opacityValue.textContent = `${el.opacity.value}%`;
  compose();
});

// The key lives in this input only (never in storage); a new key retries a refused /info.
function keyEntered() {
  if (!page.info && !page.infoLoading) start();
}
el.apiKey.addEventListener("change", keyEntered);
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault(); // Enter in the field
  keyEntered();
});

// Drop anywhere on the page.
let dragDepth = 0;
document.addEventListener("dragenter", (e) => {
  if (!e.dataTransfer || !Array.from(e.dataTransfer.types).includes("Files")) return;
  e.preventDefault();
  dragDepth += 1;
  document.body.classList.add("dragging");
});
document.addEventListener("dragover", (e) => {
  if (e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files")) {
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  }
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) document.body.classList.remove("dragging");
});
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  document.body.classList.remove("dragging");
  takeFile(e.dataTransfer && e.dataTransfer.files[0]);
});

// Paste an image from the clipboard.
document.addEventListener("paste", (e) => {
  const item = Array.from(e.clipboardData?.items || []).find((i) => i.kind === "file" && i.type.startsWith("image/"));
  const file = item && item.getAsFile();
  if (file) {
    e.preventDefault();
    takeFile(new File([file], file.name && file.name !== "image.png" ? file.name : "pasted.png", { type: file.type }));
  }
});

// Re-sample to the new size when the layout changes (window resize, rotation).
let resizeQueued = false;
new ResizeObserver(() => {
  if (resizeQueued || !page.result) return;
  resizeQueued = true;
  requestAnimationFrame(() => {
    resizeQueued = false;
    const r = page.result;
    if (!r || !page.layers) return;
    const { cssWidth } = displaySize(r.width, r.height);
    if (Math.abs(cssWidth - parseFloat(el.overlay.style.width)) >= 2) renderLayers();
  });
}).observe(el.view);

async function start() {
  clearError();
  setStatus("Loading model information…");
  try {
    await loadInfo();
    setStatus("Choose an image, drop one on the page or paste one.");
    if (document.body.dataset.state !== "busy") setState("ready");
  } catch (err) {
    el.model.textContent = "Model information unavailable";
    setStatus("The server did not describe its model.");
    showError(err.message);
  }
}

start();
