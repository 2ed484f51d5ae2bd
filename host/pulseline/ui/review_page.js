"use strict";
// The review page's script (review_page.html): a recorded run as a cine loop at
// its true frame time, with each frame's technique and dose. A file of its own,
// not inline: the review's Content-Security-Policy allows no inline script.
const $ = (id) => document.getElementById(id);
// This launch's secret, put in the page by the review: every request carries it.
const token = document.querySelector('meta[name="pulseline-token"]').content;
const show = (id, on) => $(id).classList.toggle("hidden", !on);
const isNum = (v) => typeof v === "number" && isFinite(v);
// (No "-0.0": a value that rounds to 0 is 0.)
const fmt = (v, d) => (isNum(v) ? (+v.toFixed(d) === 0 ? 0 : v).toFixed(d) : "—");
// Window and level: view_display.js, the live view's page's too.
const display = makeDisplay({ canvas: $("image"), win: $("win"), lev: $("lev"), auto: $("auto"), wl: $("wl") });
const CACHE_BYTES = 512 * 1024 * 1024; // frames kept in the page; a longer run is fetched as playback goes

let exam = null, n = 0, px = 0, chunk = 32, nChunks = 0, maxChunks = 0, cumulative = [];
const cache = new Map(); // chunk number -> its frames' pixels (Uint16Array)
const pending = new Map(); // chunk number -> its fetch (a promise), while under way
let index = 0, waiting = false, failed = false;
let playing = false, t0 = 0, i0 = 0, stepsDone = 0, speed = 1;
// What the page has done, for tests: the frame shown, playback's steps (each
// [performance.now(), advanced]) and the frames drawn.
window.pulseline = { ready: false, index: 0, playing: false, advanced: 0, drawn: 0, loaded: 0, steps: [] };

function banner(text) { $("banner").textContent = text || ""; show("banner", !!text); }
async function get(path) {
  const r = await fetch(path, { headers: { "x-pulseline-token": token } });
  if (!r.ok) {
    let why = `${r.status}`;
    try { why = (await r.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${why}`);
  }
  return r;
}

// -- frames: fetched in chunks, kept while they fit ---------------------------------

const chunkOf = (i) => Math.floor(i / chunk);
function loadChunk(c) {
  if (!pending.has(c) && !cache.has(c)) pending.set(c, fetchChunk(c));
  return pending.get(c) || Promise.resolve();
}
async function fetchChunk(c) {
  try {
    const start = c * chunk, count = Math.min(chunk, n - start);
    const buf = await (await get(`/api/frames?start=${start}&count=${count}`)).arrayBuffer();
    cache.set(c, new Uint16Array(buf));
    // Over the budget: drop the chunk playback would reach last (the one just behind).
    while (cache.size > maxChunks) {
      const here = chunkOf(index);
      let worst = null, far = -1;
      for (const k of cache.keys()) { const d = (k - here + nChunks) % nChunks; if (d > far) { far = d; worst = k; } }
      cache.delete(worst);
    }
    window.pulseline.loaded = [...cache.keys()].reduce((s, k) => s + Math.min(chunk, n - k * chunk), 0);
    if (waiting && chunkOf(index) === c) showFrame(index);
  } catch (e) {
    failed = true; // said, and not asked again and again
    banner(`cannot load frames: ${e.message || e}`);
  } finally {
    pending.delete(c);
  }
}
function frameData(i) {
  const a = cache.get(chunkOf(i));
  if (!a) return null;
  const off = (i - chunkOf(i) * chunk) * px;
  return a.subarray(off, off + px);
}
async function prefetch() {
  // From the frame shown on (round the loop): all of a run that fits, else what playback reaches next.
  while (!failed) {
    const here = chunkOf(index);
    let want = null;
    for (let k = 0; k < Math.min(nChunks, maxChunks); k++) {
      const c = (here + k) % nChunks;
      if (!cache.has(c)) { want = c; break; }
    }
    if (want !== null) { await loadChunk(want); continue; }
    if (nChunks <= maxChunks) return; // all of it is here
    await new Promise((r) => setTimeout(r, 200));
  }
}

// -- one frame ----------------------------------------------------------------------

function setValue(id, v, digits) {
  const el = $(id);
  el.textContent = digits === undefined ? (v === undefined || v === null ? "—" : String(v)) : fmt(v, digits);
  el.dataset.value = v === undefined || v === null ? "" : JSON.stringify(v);
}
function showFrame(i) {
  index = Math.max(0, Math.min(n - 1, i));
  window.pulseline.index = index;
  const data = frameData(index);
  waiting = data === null;
  show("loading", waiting);
  if (data) {
    display.draw({ lines: exam.lines, pixels: exam.pixels, data });
    window.pulseline.drawn++;
  } else {
    loadChunk(chunkOf(index));
  }
  const m = exam.meta[index];
  $("scrub").value = index;
  $("position").textContent = `frame ${index + 1} of ${n} · ${fmt(m.t_s, 3)} s` +
    (m.lines_lost ? ` · ${m.lines_lost} lines lost` : "") + (index === n - 1 ? " · the last image" : "");
  setValue("f-frame", m.frame_id); setValue("f-pulse", m.pulse_id); setValue("f-time", m.t_s, 3);
  setValue("f-event", m.event);
  setValue("f-kv", m.kv, 2); setValue("f-ma", m.ma, 3); setValue("f-width", m.pulse_width_ms, 2);
  setValue("f-kerma", m.air_kerma_ugy, 3); setValue("f-kap", m.kap_ugy_m2, 5); setValue("f-lost", m.lines_lost);
  setValue("f-cum", cumulative[index] / 1000, 4);
  // The run's last frame is the image the operator was left with: held.
  show("lih", index === n - 1);
  for (const row of $("event-rows").children) row.classList.toggle("cur", +row.dataset.event === m.event);
}

// -- playback: the frame shown follows the clock, at the run's frame time ------------

function setPlaying(on) {
  const was = playing;
  playing = on;
  window.pulseline.playing = on;
  $("play").innerHTML = on ? "&#10074;&#10074; pause" : "&#9654; play";
  if (on) anchor();
  if (on && !was) requestAnimationFrame(tick);
}
function anchor() { t0 = performance.now(); i0 = index; stepsDone = 0; }
function tick() {
  if (!playing) return;
  const now = performance.now();
  if (waiting) { anchor(); requestAnimationFrame(tick); return; } // the clock waits for the frame
  const due = Math.floor((now - t0) * speed / exam.frame_time_ms);
  if (due > stepsDone) {
    let next = i0 + due, steps = due - stepsDone;
    if (next > n - 1 && !$("loop").checked) { steps -= next - (n - 1); next = n - 1; playing = false; }
    stepsDone = due;
    const p = window.pulseline;
    p.advanced += steps;
    p.steps.push([now, p.advanced]);
    if (p.steps.length > 10000) p.steps.splice(0, p.steps.length - 10000);
    showFrame(next % n);
    if (!playing) setPlaying(false);
  }
  requestAnimationFrame(tick);
}
function step(by) { setPlaying(false); showFrame(index + by); }
$("play").onclick = () => {
  if (!playing && index === n - 1 && !$("loop").checked) showFrame(0);
  setPlaying(!playing);
};
$("back").onclick = () => step(-1);
$("fwd").onclick = () => step(1);
$("first").onclick = () => { setPlaying(false); showFrame(0); };
$("last").onclick = () => { setPlaying(false); showFrame(n - 1); };
$("speed").onchange = () => { speed = +$("speed").value; if (playing) anchor(); };
$("scrub").addEventListener("input", () => { setPlaying(false); showFrame(+$("scrub").value); });
window.addEventListener("keydown", (e) => {
  if (!exam || e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
  const keys = { Space: () => $("play").onclick(), ArrowLeft: () => step(-1), ArrowRight: () => step(1),
    Home: () => $("first").onclick(), End: () => $("last").onclick() };
  if (keys[e.code]) { e.preventDefault(); keys[e.code](); }
});

// -- the exam -------------------------------------------------------------------------

function cell(row, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; row.appendChild(td); }
function showExam() {
  document.title = `pulseline review: ${exam.name}`;
  const tech = exam.technique || {};
  $("examline").textContent = `${exam.name}: ${exam.board || "?"} board ${exam.board_serial || "?"}, firmware ` +
    `${exam.firmware || "?"}, detector ${exam.detector_serial || "?"} (${exam.lines} × ${exam.pixels}); ` +
    (exam.corrected ? "corrected" : "raw (uncorrected)") + (exam.preset ? `; preset ${exam.preset}` : "") +
    (isNum(tech.kv) ? `; asked for ${tech.kv} kV ${tech.ma} mA ${tech.pulse_width_ms} ms at ${tech.pulses_per_s} pps` : "");
  $("warnings").textContent = exam.warnings.join(" · ");
  $("nframes").textContent = n;
  $("frametime").textContent = fmt(exam.frame_time_ms, 1);
  $("framerate").textContent = fmt(exam.frame_rate, 2);
  $("timefrom").textContent = `from ${exam.frame_time_from}`;
  const rep = exam.dose_report || {};
  for (const e of rep.events || []) {
    const row = document.createElement("tr");
    row.dataset.event = e.event;
    cell(row, e.event); cell(row, fmt(e.t_s, 1)); cell(row, e.pulses); cell(row, e.pulses_per_s);
    cell(row, fmt(e.kv, 1)); cell(row, fmt(e.ma, 2)); cell(row, fmt(e.pulse_width_ms, 1));
    cell(row, fmt(e.kerma_ugy / 1000, 3)); cell(row, fmt(e.kap_ugy_m2 * 0.01, 4));
    $("event-rows").appendChild(row);
    if (e.ended) {
      const note = document.createElement("tr"); note.dataset.event = e.event; note.className = "note";
      const td = document.createElement("td"); td.colSpan = 9; td.className = "ended"; td.textContent = e.ended;
      note.appendChild(td); $("event-rows").appendChild(note);
    }
  }
  setValue("t-kerma", rep.kerma_mgy, 3); setValue("t-kap", rep.kap_gy_cm2, 4); setValue("t-fluoro", rep.fluoro_s);
  setValue("t-pulses", rep.pulses); setValue("t-events", rep.events_total);
}

async function start() {
  try {
    exam = await (await get("/api/exam")).json();
  } catch (e) {
    banner(`cannot load the exam: ${e.message || e}`);
    return;
  }
  n = exam.frames; px = exam.lines * exam.pixels; chunk = exam.chunk_frames;
  nChunks = Math.ceil(n / chunk);
  maxChunks = Math.max(2, Math.floor(CACHE_BYTES / (chunk * px * 2)));
  let sum = 0;
  cumulative = exam.meta.map((m) => (sum += isNum(m.air_kerma_ugy) ? m.air_kerma_ugy : 0));
  $("scrub").max = n - 1;
  for (const id of ["win", "lev"]) $(id).max = exam.window.full_scale;
  // The run's own window (its 1st to 99th percentile), the same for every frame: no flicker.
  const { lo, hi } = exam.window;
  display.setWindow(Math.max(1, Math.round(hi - lo)), Math.round((hi + lo) / 2));
  showExam();
  showFrame(0);
  await loadChunk(0);
  window.pulseline.ready = true;
  prefetch();
}
start();
