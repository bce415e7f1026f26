"""A self-contained interactive scatter plot (one HTML file, no network, no plotting library):
hover shows each image's name and groups, the legend toggles groups, a menu switches the
colouring, the wheel zooms, dragging pans (2-D) or rotates (3-D)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

import numpy as np

from microfm.utils.io import atomic_write_text

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd",
]  # fmt: skip

_SCRIPT = """
const D = JSON.parse(document.getElementById('data').textContent);
const cv = document.getElementById('plot'), ctx = cv.getContext('2d');
const tip = document.getElementById('tip'), menu = document.getElementById('by');
const legend = document.getElementById('legend');
let by = Object.keys(D.colourings)[0], hidden = {}, zoom = 1, px = 0, py = 0;
let yaw = 0.6, pitch = 0.4;
const dim = D.points[0].length;
Object.keys(D.colourings).forEach(k => { const o = document.createElement('option');
  o.value = k; o.textContent = 'colour by ' + k; menu.appendChild(o); });
menu.onchange = () => { by = menu.value; hidden = {}; drawLegend(); draw(); };
const lo = [0, 1, 2].map(d => Math.min(...D.points.map(p => p[d] ?? 0)));
const hi = [0, 1, 2].map(d => Math.max(...D.points.map(p => p[d] ?? 0)));
function norm(p) {
  return [0, 1, 2].map(d => hi[d] > lo[d] ? 2 * ((p[d] ?? 0) - lo[d]) / (hi[d] - lo[d]) - 1 : 0);
}
function project(p) {
  let [x, y, z] = norm(p);
  if (dim === 3) {
    const cx = Math.cos(yaw), sx = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    const x1 = cx * x + sx * z, z1 = -sx * x + cx * z;
    const y1 = cp * y - sp * z1; x = x1; y = y1;
  }
  const s = 0.45 * Math.min(cv.width, cv.height) * zoom;
  return [cv.width / 2 + px + s * x, cv.height / 2 + py - s * y];
}
let screen = [];
function draw() {
  ctx.clearRect(0, 0, cv.width, cv.height); screen = [];
  const g = D.colourings[by];
  D.points.forEach((p, i) => { const c = g.values[i]; if (hidden[c]) return;
    const [x, y] = project(p); screen.push([x, y, i]);
    ctx.fillStyle = D.palette[c % D.palette.length]; ctx.globalAlpha = 0.75;
    ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.fill(); });
}
function drawLegend() {
  legend.innerHTML = ''; const g = D.colourings[by];
  g.names.forEach((n, c) => { const d = document.createElement('div');
    const count = g.values.filter(v => v === c).length;
    const colour = D.palette[c % D.palette.length];
    d.innerHTML = '<span style="background:' + colour + '"></span>' + n + ' (' + count + ')';
    d.style.opacity = hidden[c] ? 0.3 : 1;
    d.onclick = () => { hidden[c] = !hidden[c]; drawLegend(); draw(); };
    legend.appendChild(d); });
}
let drag = null;
cv.onmousedown = e => { drag = [e.offsetX, e.offsetY]; };
window.onmouseup = () => { drag = null; };
cv.onmousemove = e => {
  if (drag) {
    const dx = e.offsetX - drag[0], dy = e.offsetY - drag[1]; drag = [e.offsetX, e.offsetY];
    if (dim === 3) { yaw += dx / 150; pitch += dy / 150; } else { px += dx; py += dy; }
    draw(); return;
  }
  let best = null, bd = 49;
  screen.forEach(([x, y, i]) => {
    const d = (x - e.offsetX) ** 2 + (y - e.offsetY) ** 2; if (d < bd) { bd = d; best = i; }
  });
  if (best === null) { tip.style.display = 'none'; return; }
  const parts = [D.names[best]].concat(Object.keys(D.colourings).map(k =>
    k + ': ' + D.colourings[k].names[D.colourings[k].values[best]]));
  tip.textContent = parts.join('\\n'); tip.style.display = 'block';
  tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px';
};
cv.onwheel = e => { e.preventDefault(); zoom *= e.deltaY < 0 ? 1.15 : 1 / 1.15; draw(); };
drawLegend(); draw();
"""

_STYLE = """
body { font-family: sans-serif; margin: 12px; } #wrap { display: flex; gap: 16px; }
canvas { border: 1px solid #ccc; cursor: crosshair; }
#legend div { cursor: pointer; font-size: 13px; margin: 2px 0; }
#legend span { display: inline-block; width: 11px; height: 11px; margin-right: 6px;
  border-radius: 6px; }
#tip { position: absolute; display: none; background: #fff; border: 1px solid #999;
  padding: 4px 6px; font-size: 12px; white-space: pre; pointer-events: none; }
"""


def scatter_html(
    points: np.ndarray,
    colourings: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    names: Sequence[str],
    title: str,
) -> str:
    """The HTML text of an interactive 2-D or 3-D scatter plot of ``points`` (N, 2|3)."""
    data = {
        "points": np.round(np.asarray(points, dtype=np.float64), 5).tolist(),
        "names": [str(n) for n in names],
        "colourings": {
            by: {"values": np.asarray(v).astype(int).tolist(), "names": [str(n) for n in ns]}
            for by, (v, ns) in colourings.items()
        },
        "palette": PALETTE,
    }
    payload = json.dumps(data).replace("</", "<\\/")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><select id='by'></select>"
        "<div id='wrap'><canvas id='plot' width='720' height='620'></canvas>"
        "<div id='legend'></div></div><div id='tip'></div>"
        f"<script type='application/json' id='data'>{payload}</script>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_scatter_html(points, colourings, names, title, path) -> None:
    """Write :func:`scatter_html` to ``path`` atomically."""
    atomic_write_text(path, scatter_html(points, colourings, names, title))
