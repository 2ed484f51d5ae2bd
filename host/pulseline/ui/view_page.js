"use strict";
// The live view's page script (view_page.html). A file of its own, not inline:
// the view's Content-Security-Policy allows no inline script.
const $ = (id) => document.getElementById(id);
// This launch's secret, put in the page by the view: every request and the
// WebSocket carry it (no cookie: cookies on localhost reach every port).
const token = document.querySelector('meta[name="pulseline-token"]').content;
const show = (id, on) => $(id).classList.toggle("hidden", !on);
// Window and level: view_display.js, the review page's too.
const display = makeDisplay({ canvas: $("image"), win: $("win"), lev: $("lev"), auto: $("auto"), wl: $("wl") });
let last = null, held = false, shown = 0, bits = 12, board = null;
let doorClosed = true, sound = false, audio = null, alarmsOn = {};
// What this tab has put on screen, newest last: for tests and benchmarks.
window.pulseline = { shown: [] };
const fmt = (v, d) => (v === undefined || v === null) ? "—" : Number(v).toFixed(d);

function banner(text) { $("banner").textContent = text || ""; show("banner", !!text); }
function beep(freq, ms) {
  if (!sound) return;
  audio = audio || new AudioContext();
  const o = audio.createOscillator(), g = audio.createGain();
  o.frequency.value = freq; g.gain.value = 0.15; o.connect(g); g.connect(audio.destination);
  o.start(); o.stop(audio.currentTime + ms / 1000);
}
setInterval(() => { if (alarmsOn.hlc_tone) beep(880, 300); else if (alarmsOn.fluoro_5min) beep(660, 150); }, 1000);
$("sound").onclick = () => { sound = !sound; $("sound").textContent = "sound: " + (sound ? "on" : "off");
  $("sound").classList.toggle("on", sound); if (sound) beep(440, 60); };
function showAlarms() {
  const names = { fluoro_5min: "5-minute fluoroscopy alarm", hlc_tone: "HIGH-LEVEL CONTROL", dose_notify: "dose notification" };
  $("alarms").textContent = Object.keys(alarmsOn).filter((k) => alarmsOn[k]).map((k) => names[k] || k).join(" · ");
}

function onText(m) {
  switch (m.type) {
    case "board":
      board = m.board; $("boardline").textContent = board ?
        `${board.board} board ${board.serial}, firmware ${board.firmware}, detector ${board.detector_serial}` :
        `no board on ${m.where}`;
      show("controls", m.controls); show("rec", m.recording);
      break;
    case "state":
      $("state").textContent = m.state;
      break;
    case "fault":
      $("faults").textContent = m.name ? "FAULT: " + m.name : "";
      break;
    case "hold":
      if (m.on) { held = true; if (last) show("lih", true); } else { held = false; }
      break;
    case "dose":
      $("kv").textContent = fmt(m.kv, 1); $("ma").textContent = fmt(m.ma, 2);
      $("rate").textContent = fmt(m.rate_mgy_min, 2); $("kerma").textContent = fmt(m.kerma_mgy, 3);
      $("kap").textContent = fmt(m.kap_gy_cm2, 4); $("fluoro").textContent = fmt(m.fluoro_min, 1);
      break;
    case "status":
      $("state").textContent = m.state; $("why").textContent = m.block && m.block !== "none" ? "blocked: " + m.block : "";
      if (m.technique) { $("kv").textContent = fmt(m.technique.kv, 1); $("ma").textContent = fmt(m.technique.ma, 2); }
      $("kerma").textContent = fmt(m.kerma_mgy, 3); $("kap").textContent = fmt(m.kap_gy_cm2, 4);
      $("fluoro").textContent = fmt(m.fluoro_min, 1);
      if (m.state !== "EXPOSING") $("rate").textContent = fmt(0, 2);
      $("lost").textContent = (m.lines_lost || 0) + (m.lines_lost_host || 0);
      alarmsOn.fluoro_5min = !!m.alarm_5min; showAlarms();
      break;
    case "event":
      if (m.event === "alarm") { alarmsOn[m.alarm] = !!m.active; showAlarms(); if (m.active) beep(880, 200); }
      if (m.event === "blocked") $("why").textContent = "blocked: " + m.reason;
      break;
    case "link":
      banner(m.ok ? "" : m.error);
      break;
    case "display":
      $("dropped").textContent = m.dropped;
      break;
    case "tabs":
      $("tabs").textContent = m.count > 1 ? `${m.count} tabs are showing this board` : "";
      break;
  }
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const off = 4 + n;
  const data = new Uint16Array(buf.slice(off));
  last = { ...head, data };
  bits = head.bits;
  display.draw(last);
  shown++; $("shown").textContent = shown;
  if (!held) show("lih", false);
  const lih = !$("lih").classList.contains("hidden");
  // On screen: the browser's next rendering step. The delay runs from the
  // host having the frame assembled (same machine clock) to that moment.
  requestAnimationFrame(() => {
    const delay = performance.timeOrigin + performance.now() - head.arrived_ms;
    $("delay").textContent = delay.toFixed(0);
    const log = window.pulseline.shown;
    log.push({ frame_id: head.frame_id, pulse_id: head.pulse_id, delay_ms: delay, lih });
    if (log.length > 10000) log.splice(0, log.length - 10000);
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "shown", frame_id: head.frame_id, delay_ms: delay }));
  });
}

let ws;
function connect() {
  ws = new WebSocket(`ws://${location.host}/ws?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => banner("");
  ws.onmessage = (e) => (typeof e.data === "string" ? onText(JSON.parse(e.data)) : onFrame(e.data));
  ws.onclose = () => { banner("the view server is gone (pulseline view stopped?); retrying…"); setTimeout(connect, 2000); };
}
connect();

// Commands go as JSON only, with the token in a header: the view refuses anything else.
const post = (path, body) => fetch(path, { method: "POST", body: JSON.stringify(body),
  headers: { "content-type": "application/json", "x-pulseline-token": token } });
async function set(name, value) {
  const r = await post("/api/control", { name, value });
  if (!r.ok) banner((await r.json()).error);
}
function holdButton(el, name) {
  const down = (e) => { e.preventDefault(); el.classList.add("on"); set(name, true); };
  const up = () => { if (el.classList.contains("on")) { el.classList.remove("on"); set(name, false); } };
  el.addEventListener("pointerdown", down); el.addEventListener("pointerup", up); el.addEventListener("pointerleave", up);
  return { down, up };
}
for (const name of ["arm", "disarm", "fault_reset", "alarm_reset"]) {
  $(name).onclick = async () => {
    const r = await post("/api/command", { command: name });
    const a = await r.json();
    banner(a.ok ? "" : a.error);
  };
}
const sw = holdButton($("switch"), "switch"), hlc = holdButton($("hlc"), "hlc_switch");
$("door").onclick = () => { doorClosed = !doorClosed; set("door_closed", doorClosed);
  $("door").textContent = `door: ${doorClosed ? "closed" : "OPEN"} (D)`; $("door").classList.toggle("on", !doorClosed); };
$("water").onchange = () => set("water_cm", +$("water").value);
$("structures").onchange = () => set("structures", $("structures").checked);
window.addEventListener("keydown", (e) => {
  if (e.repeat || $("controls").classList.contains("hidden")) return;
  if (e.code === "Space") sw.down(e); else if (e.code === "KeyH") hlc.down(e); else if (e.code === "KeyD") $("door").onclick();
});
// (Space's keyup would also click a focused button, say the last console one: not here.)
window.addEventListener("keyup", (e) => {
  if ($("controls").classList.contains("hidden")) return;
  if (e.code === "Space") { e.preventDefault(); sw.up(); } else if (e.code === "KeyH") hlc.up();
});
window.addEventListener("blur", () => { sw.up(); hlc.up(); });  // a pedal is held only while held
