"use strict";
// Window and level of a 16-bit frame on a canvas: the live view's page and the
// review's (view_page.js, review_page.js) both draw with it. A file of its own,
// not inline: the pages' Content-Security-Policy allows no inline script.
//
// makeDisplay({canvas, win, lev, auto, wl}): the canvas, the window and level
// sliders, the auto button and the text that shows W and L. draw(f) draws a
// frame {lines, pixels, data: Uint16Array}; until a window is set (a slider,
// a drag on the image, setWindow) each frame is fitted with autoWindow.
function makeDisplay({ canvas, win, lev, auto, wl }) {
  const ctx = canvas.getContext("2d");
  const d = { last: null, windowSet: false };
  const label = () => { wl.textContent = `W ${win.value} L ${lev.value}`; };

  d.draw = (f) => {
    d.last = f;
    const { lines, pixels, data } = f;
    if (canvas.width !== pixels || canvas.height !== lines) { canvas.width = pixels; canvas.height = lines; }
    if (!d.windowSet) d.autoWindow(f);
    const w = +win.value, lo = +lev.value - w / 2, scale = 255 / w;
    const img = ctx.createImageData(pixels, lines), out = img.data;
    for (let i = 0, j = 0; i < data.length; i++, j += 4) {
      let g = (data[i] - lo) * scale; g = g < 0 ? 0 : g > 255 ? 255 : g;
      out[j] = out[j + 1] = out[j + 2] = g; out[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  };
  // The 1st to 99th percentile of a sample: dead and hot pixels do not set the window.
  d.autoWindow = (f) => {
    const step = Math.max(1, Math.floor(f.data.length / 4096)), sample = [];
    for (let i = 0; i < f.data.length; i += step) sample.push(f.data[i]);
    sample.sort((a, b) => a - b);
    const lo = sample[Math.floor(sample.length * 0.01)], hi = sample[Math.floor(sample.length * 0.99)];
    if (hi > lo) { win.value = hi - lo; lev.value = (hi + lo) / 2; d.windowSet = true; }
    label();
  };
  d.setWindow = (w, l) => {
    win.value = w; lev.value = l; d.windowSet = true; label();
    if (d.last) d.draw(d.last);
  };

  for (const el of [win, lev]) el.addEventListener("input", () => { d.windowSet = true; if (d.last) d.draw(d.last); label(); });
  auto.addEventListener("click", () => { d.windowSet = false; if (d.last) d.draw(d.last); });
  // Drag on the image: right and left widen and narrow the window, down and up lower and raise the level.
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, w: +win.value, l: +lev.value }; });
  window.addEventListener("pointerup", () => { drag = null; });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    d.windowSet = true;
    win.value = Math.max(1, drag.w + (e.clientX - drag.x) * 8); lev.value = drag.l - (e.clientY - drag.y) * 8;
    label();
    if (d.last) d.draw(d.last);
  });
  return d;
}
