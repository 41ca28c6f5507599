// The page of `dsh serve`: choose or drop an image (or type a hex code), show its code and its nearest items.
// Plain JavaScript against the server's own JSON API; nothing is loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("dsh-token") || "";
tokenInput.addEventListener("change", () => localStorage.setItem("dsh-token", tokenInput.value));

function headers() {
  const t = tokenInput.value.trim();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error(body?.error?.message || `${res.status} ${res.statusText}`);
  return body;
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

// images need the token too, so they are fetched and shown as object URLs
async function loadImage(img, url) {
  try {
    const res = await fetch(url, { headers: headers() });
    if (res.ok) img.src = URL.createObjectURL(await res.blob());
  } catch (e) { /* the tile keeps its text */ }
}

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function showResults(answer) {
  $("query-code").hidden = false;
  $("code-hex").textContent = answer.query.code;
  $("code-bits").textContent = answer.query.bits;
  const grid = $("results");
  grid.replaceChildren();
  if (!answer.results.length) grid.append(text("p", "No items within reach.", "muted"));
  for (const item of answer.results) {
    const tile = document.createElement("div");
    tile.className = "neighbor";
    tile.dataset.id = item.id;
    if (item.image_url) {
      const img = document.createElement("img");
      img.alt = `item ${item.id}`;
      tile.append(img);
      loadImage(img, item.image_url);
    }
    tile.append(text("div", `d = ${item.distance}`, "d"));
    tile.append(text("div", item.class ?? (item.label ?? "")));
    tile.append(text("div", `#${item.id}`, "muted"));
    grid.append(tile);
  }
}

function k() {
  return Math.max(1, parseInt($("k").value, 10) || 10);
}

async function searchFile(file) {
  showError("");
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const form = new FormData();
  form.append("image", file);
  try {
    showResults(await api(`/api/search?k=${k()}`, { method: "POST", body: form }));
  } catch (e) { showError(e.message); }
}

async function searchHex(hex) {
  showError("");
  $("preview").hidden = true;
  try {
    showResults(await api(`/api/search?k=${k()}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ hex }),
    }));
  } catch (e) { showError(e.message); }
}

const drop = $("drop");
$("choose").addEventListener("click", (e) => { e.stopPropagation(); $("file").click(); });
drop.addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (e) => { if (e.target.files[0]) searchFile(e.target.files[0]); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]);
});
$("hex-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const hex = $("hex").value.trim();
  if (hex) searchHex(hex);
});

function showClassTable(table) {
  if (!table) return;
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of ["class", "n", "code (hex)", "code (bits)", "share", "nearest class", "dist"]) {
    head.append(text("th", h));
  }
  const body = t.createTBody();
  for (const row of table.classes) {
    const r = body.insertRow();
    r.append(text("td", row.name), text("td", row.count));
    const hexCell = document.createElement("td");
    hexCell.append(text("code", `0x${row.code_hex}`));
    const bitsCell = document.createElement("td");
    bitsCell.append(text("code", row.code_binary));
    r.append(hexCell, bitsCell, text("td", `${(100 * row.share_exact).toFixed(1)}%`),
             text("td", row.nearest_class ?? ""), text("td", row.nearest_distance ?? ""));
  }
  $("class-table").replaceChildren(t);
  $("class-table").classList.remove("muted");
}

// shown only when the server takes changes (dsh serve --writable): upload images, each with the class and key chosen
function setUpAdding(info) {
  if (!info.writable) return;
  const names = info.model.class_names || (info.class_table ? info.class_table.classes.map((c) => c.name) : []);
  for (const name of names) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("add-class").append(option);
  }
  $("add-form").hidden = false;
  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("");
    const files = [...$("add-files").files];
    const form = new FormData();
    for (const file of files) {
      form.append("image", file);
      form.append("class", $("add-class").value);
      form.append("key", $("add-key").value.trim());
    }
    try {
      const answer = await api("/api/items", { method: "POST", body: form });
      const ids = answer.items.map((item) => `#${item.id}`).join(", ");
      $("add-status").textContent = `added ${ids}`;
      $("add-form").reset();
      if (files.length === 1) searchFile(files[0]);
    } catch (err) { showError(err.message); }
  });
}

async function start() {
  try {
    const info = await api("/api/info");
    const m = info.model;
    $("model").textContent = `${m.file}: ${m.nbits}-bit codes, input ${m.input_shape.join("×")}, ` +
      `${info.index.items.toLocaleString()} items, ${m.backend}`;
    showClassTable(info.class_table);
    setUpAdding(info);
    if (info.map_image) {
      $("map-section").hidden = false;
      loadImage($("map"), info.map_image);
    }
  } catch (e) {
    $("model").textContent = "";
    showError(e.message);
  }
}
start();
