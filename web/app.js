// The page of `regula serve` (docs/web.md): the jobs of the project, live, and for a job what people
// look at: class galleries, maps in 3D with a threshold (coloured by local resolution when there is a
// local-resolution map), central slices, FSC curves, angular distributions, resolution per iteration,
// Guinier plots, micrographs with their picks, motion trajectories and CTF fits, the pipeline as a graph, and the
// files behind them.
// three.js (npm, embedded at build time) draws the isosurface; everything else is plain canvas.

let THREE = null;
try {
  THREE = await import('./three.module.js');
} catch (e) {
  THREE = null;  // built without npm: no 3D viewer
}

const $ = (sel, el = document) => el.querySelector(sel);
const h = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
};
async function api(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error((await r.json().catch(() => ({error: r.statusText}))).error || r.statusText);
  return r.headers.get('content-type')?.includes('json') ? r.json() : r;
}
const q = encodeURIComponent;
let selected = null;

// ---------------- job list (polled every second) ----------------
function fmtTime(s) {
  if (!s) return '';
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor(s % 3600 / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}
async function refreshJobs() {
  let jobs;
  try { jobs = await api('/api/jobs'); } catch (e) { return; }
  const tb = $('#jobs tbody');
  tb.replaceChildren(...jobs.map(j => {
    const p = j.progress;
    const frac = p && p.total > 0 ? Math.min(1, p.done / p.total) : (j.status === 'finished' ? 1 : 0);
    const tr = h('tr', {class: 'job' + (selected === j.dir ? ' selected' : ''), 'data-dir': j.dir, onclick: () => showJob(j)},
      h('td', {}, j.dir),
      h('td', {class: 'status-' + j.status, title: j.detail || ''}, j.detail ? j.status + ' (process gone)' : j.status),
      h('td', {class: 'progress', title: p ? p.task : ''}, h('span', {class: 'bar'}, h('span', {style: `width:${(100 * frac).toFixed(1)}%`})),
        ' ', p ? `${Math.round(p.done)}/${Math.round(p.total)}` : ''),
      h('td', {}, fmtTime(j.status === 'running' ? (p ? (p.elapsed ?? p.elapsed_s ?? 0) : 0) : (j.end && j.start ? j.end - j.start : 0))));
    return tr;
  }));
}
setInterval(refreshJobs, 1000);
refreshJobs();

// ---------------- plots ----------------
// Line plot on a canvas: series [{x, y, colour, label}], optional horizontal lines.
function linePlot(canvas, series, {xmin, xmax, ymin, ymax, hlines = [], xlabel = '', title = ''}) {
  const c = canvas.getContext('2d'), W = canvas.width, H = canvas.height, L = 50, R = 10, T = 24, B = 34;
  c.fillStyle = 'white'; c.fillRect(0, 0, W, H);
  const X = x => L + (x - xmin) / (xmax - xmin) * (W - L - R), Y = y => H - B - (y - ymin) / (ymax - ymin) * (H - T - B);
  c.strokeStyle = '#000'; c.lineWidth = 1; c.strokeRect(L, T, W - L - R, H - T - B);
  c.fillStyle = '#000'; c.font = '12px sans-serif';
  for (let i = 0; i <= 4; i++) {
    const yv = ymin + (ymax - ymin) * i / 4, xv = xmin + (xmax - xmin) * i / 4;
    c.fillText(yv.toFixed(2), 4, Y(yv) + 4);
    c.fillText(xv.toPrecision(3), X(xv) - 12, H - B + 14);
  }
  c.fillText(xlabel, W / 2 - 40, H - 4);
  c.fillText(title, L, 16);
  c.setLineDash([5, 4]); c.strokeStyle = '#888';
  for (const yv of hlines) { c.beginPath(); c.moveTo(L, Y(yv)); c.lineTo(W - R, Y(yv)); c.stroke(); }
  c.setLineDash([]);
  let ly = T + 14;
  for (const s of series) {
    c.strokeStyle = s.colour; c.lineWidth = 2; c.beginPath();
    let started = false;
    s.x.forEach((x, i) => {
      const y = s.y[i];
      if (!isFinite(y) || y <= -99) { started = false; return; }
      if (!started) { c.moveTo(X(x), Y(Math.max(ymin, Math.min(ymax, y)))); started = true; } else c.lineTo(X(x), Y(Math.max(ymin, Math.min(ymax, y))));
    });
    c.stroke();
    if (s.label) { c.fillStyle = s.colour; c.fillText(s.label, W - R - 220, ly); ly += 14; }
  }
}

// ---------------- maps ----------------
async function loadMap(dir, file, positive = false) {
  const r = await fetch(`/api/map?dir=${q(dir)}&file=${q(file)}&size=64${positive ? '&positive=1' : ''}`);
  if (!r.ok) throw new Error((await r.json()).error);
  const n = +r.headers.get('X-Box-Size');
  return {n, apix: +r.headers.get('X-Pixel-Size'), data: new Float32Array(await r.arrayBuffer())};
}

// Isosurface by marching tetrahedra (6 per cube): positions in voxel units centred on the box.
function isosurface(map, level) {
  const {n, data} = map, pos = [];
  const v = (x, y, z) => data[(z * n + y) * n + x];
  const corners = [[0,0,0],[1,0,0],[1,1,0],[0,1,0],[0,0,1],[1,0,1],[1,1,1],[0,1,1]];
  const tets = [[0,5,1,6],[0,1,2,6],[0,2,3,6],[0,3,7,6],[0,7,4,6],[0,4,5,6]];
  const p = new Array(8), val = new Array(8), c = n / 2;
  const lerp = (a, b) => { const t = (level - val[a]) / (val[b] - val[a]); return [p[a][0] + t * (p[b][0] - p[a][0]) - c, p[a][1] + t * (p[b][1] - p[a][1]) - c, p[a][2] + t * (p[b][2] - p[a][2]) - c]; };
  for (let z = 0; z < n - 1; z++) for (let y = 0; y < n - 1; y++) for (let x = 0; x < n - 1; x++) {
    let any = 0;
    for (let k = 0; k < 8; k++) { p[k] = [x + corners[k][0], y + corners[k][1], z + corners[k][2]]; val[k] = v(...p[k]); any |= (val[k] > level) ? 1 : 2; }
    if (any !== 3) continue;
    for (const t of tets) {
      const inside = t.filter(i => val[i] > level), out = t.filter(i => val[i] <= level);
      if (inside.length === 1 || inside.length === 3) {
        const a = inside.length === 1 ? inside[0] : out[0], others = inside.length === 1 ? out : inside;
        const tri = others.map(o => lerp(a, o));
        if (inside.length === 3) tri.reverse();
        pos.push(...tri.flat());
      } else if (inside.length === 2) {
        const [a, b] = inside, [c1, d] = out;
        const q1 = lerp(a, c1), q2 = lerp(a, d), q3 = lerp(b, d), q4 = lerp(b, c1);
        pos.push(...q1, ...q2, ...q3, ...q1, ...q3, ...q4);
      }
    }
  }
  return new Float32Array(pos);
}

// Colour ramp for local resolution: blue (best) through cyan, green and yellow to red (worst), t in [0, 1].
function ramp(t) {
  const stops = [[0.19, 0.3, 0.85], [0.1, 0.75, 0.85], [0.2, 0.75, 0.25], [0.95, 0.85, 0.15], [0.85, 0.15, 0.1]];
  t = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
  return stops[i].map((a, k) => a + f * (stops[i + 1][k] - a));
}

// Trilinear value of a map at voxel coordinates, from its positive voxels only (0 where none).
function positiveSampler({n, data}) {
  return (x, y, z) => {
    const x0 = Math.floor(x), y0 = Math.floor(y), z0 = Math.floor(z);
    let s = 0, w = 0;
    for (let c = 0; c < 2; c++) for (let b = 0; b < 2; b++) for (let a = 0; a < 2; a++) {
      const xi = x0 + a, yi = y0 + b, zi = z0 + c;
      if (xi < 0 || yi < 0 || zi < 0 || xi >= n || yi >= n || zi >= n) continue;
      const v = data[(zi * n + yi) * n + xi];
      if (!(v > 0)) continue;
      const wt = (a ? x - x0 : 1 - x + x0) * (b ? y - y0 : 1 - y + y0) * (c ? z - z0 : 1 - z + z0);
      s += wt * v; w += wt;
    }
    return w > 0 ? s / w : 0;
  };
}

// The local-resolution colour scale: a bar from the best (left) to the worst resolution, in Å. Returns
// the function that draws it for a range.
function legend(container) {
  const c = h('canvas', {width: '420', height: '34', id: 'locres-legend'});
  container.append(h('div', {}, 'local resolution (Å) on the surface'), c);
  const x = c.getContext('2d');
  return (lo, hi) => {
    x.fillStyle = 'white'; x.fillRect(0, 0, c.width, c.height);
    for (let i = 0; i < 400; i++) { const [r, g, b] = ramp(i / 399); x.fillStyle = `rgb(${r * 255},${g * 255},${b * 255})`; x.fillRect(10 + i, 0, 1, 16); }
    x.fillStyle = '#000'; x.font = '12px sans-serif';
    for (let k = 0; k <= 4; k++) {
      x.textAlign = k === 0 ? 'left' : k === 4 ? 'right' : 'center';
      x.fillText((lo + (hi - lo) * k / 4).toFixed(1), 10 + 400 * k / 4, 30);
    }
  };
}

// `colour` (optional): a local-resolution map on the same grid; the surface is coloured by its value.
function mapViewer(container, map, colour = null) {
  const sorted = Array.from(map.data).sort((a, b) => a - b);
  const initial = sorted[Math.floor(sorted.length * 0.95)];
  const slider = h('input', {type: 'range', min: '0', max: '1000', value: '950', id: 'threshold'});
  const label = h('span', {id: 'threshold-value'}, initial.toPrecision(3));
  const canvas = h('canvas', {width: '420', height: '420', id: 'view3d'});
  container.append(h('div', {}, 'threshold ', slider, ' ', label), canvas);
  if (!THREE) { container.append(h('p', {class: 'error'}, 'The 3D viewer is not available (this build had no npm packages).')); return; }
  const renderer = new THREE.WebGLRenderer({canvas, antialias: true, preserveDrawingBuffer: true});
  renderer.setClearColor(0xffffff);
  const scene = new THREE.Scene(), camera = new THREE.PerspectiveCamera(40, 1, 0.1, 1000);
  camera.position.set(0, 0, map.n * 2.2);
  scene.add(new THREE.AmbientLight(0xffffff, 0.5));
  const light = new THREE.DirectionalLight(0xffffff, 2.0); light.position.set(1, 1, 2); scene.add(light);
  const group = new THREE.Group(); scene.add(group);
  const material = colour ? new THREE.MeshPhongMaterial({vertexColors: true, side: THREE.DoubleSide})
                          : new THREE.MeshPhongMaterial({color: 0x6f9fd8, side: THREE.DoubleSide});
  // The colour scale spans the local resolutions on the surface shown (2nd to 98th percentile).
  const bar = colour ? legend(container) : null;
  const sample = colour ? positiveSampler(colour) : null;
  let mesh = null;
  const update = () => {
    const level = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * slider.value / 1000))];
    label.textContent = level.toPrecision(3);
    const g = new THREE.BufferGeometry();
    const pos = isosurface(map, level);
    g.setAttribute('position', new THREE.BufferAttribute(pos, 3));
    if (colour) {
      const rgb = new Float32Array(pos.length), c = map.n / 2, d = new Float32Array(pos.length / 3);
      for (let i = 0; i < d.length; i++) d[i] = sample(pos[3 * i] + c, pos[3 * i + 1] + c, pos[3 * i + 2] + c);
      const v = Array.from(d).filter(x => x > 0).sort((a, b) => a - b);
      const lo = v.length ? v[Math.floor(0.02 * (v.length - 1))] : 0;
      const hi = v.length ? Math.max(v[Math.floor(0.98 * (v.length - 1))], lo + 0.1) : 1;
      for (let i = 0; i < d.length; i++) {
        const col = d[i] > 0 ? ramp((d[i] - lo) / (hi - lo)) : [0.6, 0.6, 0.6];
        rgb[3 * i] = col[0]; rgb[3 * i + 1] = col[1]; rgb[3 * i + 2] = col[2];
      }
      g.setAttribute('color', new THREE.BufferAttribute(rgb, 3));
      bar(lo, hi);
    }
    g.computeVertexNormals();
    if (mesh) { group.remove(mesh); mesh.geometry.dispose(); }
    mesh = new THREE.Mesh(g, material); group.add(mesh);
    renderer.render(scene, camera);
  };
  slider.addEventListener('input', update);
  let drag = null;
  canvas.addEventListener('mousedown', e => drag = [e.clientX, e.clientY]);
  window.addEventListener('mouseup', () => drag = null);
  canvas.addEventListener('mousemove', e => {
    if (!drag) return;
    group.rotation.y += (e.clientX - drag[0]) * 0.01; group.rotation.x += (e.clientY - drag[1]) * 0.01;
    drag = [e.clientX, e.clientY]; renderer.render(scene, camera);
  });
  group.rotation.x = 0.4; group.rotation.y = 0.6;
  update();
}

function slices(container, map) {
  const {n, data} = map, c = Math.floor(n / 2), s = 2;
  const canvas = h('canvas', {width: String(3 * n * s + 20), height: String(n * s), id: 'slices'});
  container.append(canvas);
  const ctx = canvas.getContext('2d');
  const views = [(a, b) => data[(c * n + b) * n + a], (a, b) => data[(b * n + c) * n + a], (a, b) => data[(b * n + a) * n + c]];
  let lo = Infinity, hi = -Infinity;
  for (const f of views) for (let b = 0; b < n; b++) for (let a = 0; a < n; a++) { const v = f(a, b); lo = Math.min(lo, v); hi = Math.max(hi, v); }
  views.forEach((f, i) => {
    const img = ctx.createImageData(n * s, n * s);
    for (let b = 0; b < n * s; b++) for (let a = 0; a < n * s; a++) {
      const g = 255 * (f(Math.floor(a / s), n - 1 - Math.floor(b / s)) - lo) / (hi - lo || 1), o = 4 * (b * n * s + a);
      img.data[o] = img.data[o + 1] = img.data[o + 2] = g; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, i * (n * s + 10), 0);
  });
}

// ---------------- job views ----------------
function downloads(job) {
  return h('div', {class: 'panel'}, h('h3', {}, 'Files'),
    ...job.files.filter(f => /\.(mrc|mrcs|star|png|bild)$/.test(f)).map(f => h('span', {}, h('a', {href: `/files/${job.dir}${f}`, download: f}, f), ' ')));
}

async function showClass2D(view, job) {
  const info = await api(`/api/class2d?dir=${q(job.dir)}`);
  const select = h('select', {id: 'iteration'}, ...info.iterations.map(i => h('option', {value: i, ...(i === info.iteration ? {selected: ''} : {})}, `iteration ${i}`)));
  const gallery = h('div', {class: 'gallery', id: 'gallery'});
  const draw = async it => {
    const d = await api(`/api/class2d?dir=${q(job.dir)}&iter=${it}`);
    const cls = [...d.classes].sort((a, b) => b.count - a.count || b.fraction - a.fraction);
    gallery.replaceChildren(...cls.map(c => h('figure', {},
      h('img', {src: `/api/class_image?dir=${q(job.dir)}&iter=${it}&k=${c.class}`, alt: `class ${c.class}`}),
      h('figcaption', {}, `#${c.class}: ${c.count} (${(100 * c.fraction).toFixed(1)}%), ${c.resolution.toFixed(1)} Å`))));
  };
  select.addEventListener('change', () => draw(select.value));
  const counts = h('canvas', {width: '520', height: '260', id: 'counts'});
  view.append(h('div', {class: 'panel'}, select), gallery, h('div', {class: 'panel'}, h('h3', {}, 'Particles per class over iterations'), counts));
  await draw(info.iteration);
  const over = info.counts_over_iterations;
  if (over.length) {
    const K = over[0].counts.length, colours = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
    const maxc = Math.max(1, ...over.flatMap(o => o.counts));
    linePlot(counts, [...Array(K).keys()].map(k => ({x: over.map(o => o.iteration), y: over.map(o => o.counts[k]), colour: colours[k % 10]})),
      {xmin: over[0].iteration, xmax: Math.max(over[0].iteration + 1, over[over.length - 1].iteration), ymin: 0, ymax: maxc, xlabel: 'iteration'});
  }
}

async function showFsc(view, job) {
  const fsc = await api(`/api/fsc?dir=${q(job.dir)}`);
  const canvas = h('canvas', {width: '520', height: '320', id: 'fsc'});
  view.append(h('div', {class: 'panel'}, h('h3', {}, `FSC (resolution ${fsc.final_resolution.toFixed(2)} Å)`), canvas));
  const names = {rlnGoldStandardFsc: ['gold-standard', '#000'], rlnFourierShellCorrelationCorrected: ['corrected', '#000'],
    rlnFourierShellCorrelationUnmaskedMaps: ['unmasked', '#2ca02c'], rlnFourierShellCorrelationMaskedMaps: ['masked', '#1f77b4'],
    rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps: ['phase-randomised', '#d62728']};
  const x = fsc.resolution.map((v, i) => i ? v : 0);
  linePlot(canvas, Object.entries(fsc.curves).map(([k, y]) => ({x, y, colour: (names[k] || [k, '#888'])[1], label: (names[k] || [k])[0]})),
    {xmin: 0, xmax: Math.max(...x), ymin: -0.1, ymax: 1.05, hlines: [0.143, 0], xlabel: '1/Å', title: `0.143 at ${fsc.final_resolution.toFixed(2)} Å`});
  if (fsc.guinier) {
    const g = fsc.guinier, gx = g.rlnResolutionSquared, gc = h('canvas', {width: '520', height: '320', id: 'guinier'});
    const series = [['rlnLogAmplitudesOriginal', '#000', 'original'], ['rlnLogAmplitudesWeighted', '#1f77b4', 'weighted'], ['rlnLogAmplitudesSharpened', '#d62728', 'sharpened']]
      .filter(([k]) => g[k]).map(([k, c, l]) => ({x: gx, y: g[k], colour: c, label: l}));
    const ys = series.flatMap(s => s.y).filter(v => v > -99);
    view.append(h('div', {class: 'panel'}, h('h3', {}, `Guinier plot (B-factor ${fsc.bfactor.toFixed(0)} Å²)`), gc));
    linePlot(gc, series, {xmin: 0, xmax: Math.max(...gx), ymin: Math.min(...ys) - 0.5, ymax: Math.max(...ys) + 0.5, xlabel: '1/Å²'});
  }
}

async function show3D(view, job) {
  const maps = job.files.filter(f => /\.mrc$/.test(f) && !/half[12]/.test(f));
  const final = maps.find(f => /_class001\.mrc$/.test(f) && !/_it\d{3}_/.test(f)) || maps[maps.length - 1];
  const panels = h('div', {class: 'panels'});
  view.append(panels);
  if (final) {
    const map = await loadMap(job.dir, final);
    // A local-resolution map in the job's directory (regula locres --o into it) colours the surface.
    const lr = job.files.find(f => /_locres\.mrc$/.test(f));
    const colour = lr ? await loadMap(job.dir, lr, true) : null;
    const p3 = h('div', {class: 'panel'}, h('h3', {}, `${final} (3D)${lr ? ', coloured by ' + lr : ''}`));
    const ps = h('div', {class: 'panel'}, h('h3', {}, 'Central slices (xy, xz, yz)'));
    panels.append(p3, ps);
    mapViewer(p3, map, colour && colour.n === map.n ? colour : null);
    slices(ps, map);
  }
  try { await showFsc(view, job); } catch (e) { view.append(h('p', {class: 'hint'}, `FSC: ${e.message}`)); }
  const ang = job.files.find(f => /angdist\.png$/.test(f));
  if (ang) view.append(h('div', {class: 'panel'}, h('h3', {}, 'Angular distribution (rot against tilt)'), h('img', {src: `/files/${job.dir}${ang}`, id: 'angdist'})));
  const its = await api(`/api/iterations?dir=${q(job.dir)}`);
  if (its.length > 1) {
    const c = h('canvas', {width: '520', height: '260', id: 'resolution'});
    view.append(h('div', {class: 'panel'}, h('h3', {}, 'Resolution per iteration'), c));
    const r = its.filter(i => i.resolution < 900);
    linePlot(c, [{x: r.map(i => i.iteration), y: r.map(i => i.resolution), colour: '#2b4a6f'}],
      {xmin: 0, xmax: Math.max(1, ...r.map(i => i.iteration)), ymin: 0, ymax: Math.max(...r.map(i => i.resolution)) * 1.1, xlabel: 'iteration'});
  }
}

// Local resolution (regula locres, postprocess --locres): the locally filtered map as an isosurface coloured
// by the local resolution, slices of both, the histogram in the mask when there is one.
async function showLocres(view, job) {
  const lr = job.files.find(f => /_locres\.mrc$/.test(f));
  const filtered = job.files.find(f => /_locres_filtered\.mrc$/.test(f));
  const [map, colour] = await Promise.all([loadMap(job.dir, filtered || lr), loadMap(job.dir, lr, true)]);
  const panels = h('div', {class: 'panels'});
  view.append(panels);
  const p3 = h('div', {class: 'panel'}, h('h3', {}, `${filtered || lr} coloured by local resolution`));
  const ps = h('div', {class: 'panel'}, h('h3', {}, 'Central slices of the local resolution (xy, xz, yz)'));
  panels.append(p3, ps);
  mapViewer(p3, map, colour);
  slices(ps, colour);
  const hist = job.files.find(f => /_locres_histogram\.png$/.test(f));
  if (hist) view.append(h('div', {class: 'panel'}, h('h3', {}, 'Local resolution in the mask'), h('img', {src: `/files/${job.dir}${hist}`, id: 'locres-histogram'})));
}

// Colour of a figure of merit t in [0, 1]: blue (low) through green and yellow to red (high).
const fomColour = t => `hsl(${Math.round(240 * (1 - Math.min(1, Math.max(0, t))))}, 100%, 50%)`;

// Histogram of the job's figures of merit (counts of equal bins from min to max, /api/picks) as SVG bars
// coloured as the circles.
function fomHistogram(fom, noun) {
  const svgNS = 'http://www.w3.org/2000/svg', W = 360, H = 140, pad = 24, n = fom.counts.length;
  const top = Math.max(1, ...fom.counts), svg = document.createElementNS(svgNS, 'svg');
  svg.id = 'fom-histogram';
  svg.setAttribute('width', W); svg.setAttribute('height', H); svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const bw = (W - 2 * pad) / n;
  fom.counts.forEach((c, k) => {
    const hgt = (H - 2 * pad) * c / top;
    add('rect', {class: 'fom-bar', x: pad + k * bw, y: H - pad - hgt, width: Math.max(1, bw - 1), height: hgt,
                 fill: fomColour((k + 0.5) / n), 'data-count': c});
  });
  add('line', {x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: '#444'});
  const fmt = v => Math.abs(v) >= 100 || v === 0 ? v.toFixed(0) : v.toPrecision(3);
  add('text', {x: pad, y: H - 6, 'font-size': 11}, fmt(fom.min));
  add('text', {x: W - pad, y: H - 6, 'font-size': 11, 'text-anchor': 'end'}, fmt(fom.max));
  add('text', {x: W / 2, y: H - 6, 'font-size': 11, 'text-anchor': 'middle'}, 'figure of merit');
  add('text', {x: pad, y: 14, 'font-size': 11}, `${noun} per bin (largest ${top})`);
  return svg;
}

// AutoPick and Extract jobs: the micrographs with their pick counts; the selected one binned, low-pass
// filtered and contrast-stretched by the server (/api/micrograph), with the picks drawn on top as circles
// of the particle diameter (from the job's options; the field changes it), coloured by their figure of
// merit when there is one, with its histogram over the job; for Extract, a sample of the particles.
// Puts the PNG of a fetch() response (/api/micrograph) into an <img> and waits until it has loaded; an error
// response's message is thrown.
async function showImage(img, response) {
  if (!response.ok) throw new Error((await response.json().catch(() => ({error: response.statusText}))).error);
  const url = URL.createObjectURL(await response.blob());
  await new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error('the micrograph image did not load')); img.src = url; });
}

async function showPicks(view, job) {
  const info = await api(`/api/picks?dir=${q(job.dir)}`);
  const svgNS = 'http://www.w3.org/2000/svg', noun = info.kind === 'extract' ? 'particles' : 'picks';
  let diameter = info.diameter, current = null, token = 0;
  const input = h('input', {type: 'number', id: 'pick-diameter', min: '1', step: '10', value: String(Math.round(diameter)),
                            title: `from ${info.diameter_from}`});
  const caption = h('div', {id: 'pick-count'});
  const img = h('img', {id: 'micrograph', alt: 'micrograph'});
  const svg = document.createElementNS(svgNS, 'svg');
  svg.id = 'picks';
  svg.setAttribute('preserveAspectRatio', 'none');
  const rows = info.micrographs.map(m => h('tr', {class: 'mic' + (m.count === null ? ' error' : ''), 'data-index': String(m.index),
                                                  title: [m.micrograph, m.error, m.micrograph_error].filter(Boolean).join('\n'),
                                                  onclick: () => select(m)},
    h('td', {}, m.micrograph.split('/').pop()), h('td', {class: 'count'}, m.count ?? '?')));
  view.append(h('div', {class: 'panel'}, h('span', {id: 'picks-summary'},
                  `${info.micrographs.length} micrograph${info.micrographs.length === 1 ? '' : 's'}, ${info.total} ${noun} (${info.source}); circles of `), input, ' Å'),
    h('div', {class: 'picks-layout'},
      h('div', {class: 'mic-list'}, h('table', {id: 'micrographs'},
        h('thead', {}, h('tr', {}, h('th', {}, 'micrograph'), h('th', {}, noun))), h('tbody', {}, ...rows))),
      h('div', {class: 'picks-figure'}, caption, h('div', {class: 'micrograph-view'}, img, svg))));
  if (info.fom)
    view.append(h('div', {class: 'panel'}, h('h3', {}, `Figures of merit of the ${info.total} ${noun}`),
                  fomHistogram(info.fom, noun),
                  h('p', {class: 'note'}, 'Circles are coloured by figure of merit: blue lowest, red highest.')));
  if (info.kind === 'extract' && info.total > 0) {
    const n = Math.min(48, info.total);
    view.append(h('div', {class: 'panel'}, h('h3', {}, `A sample of ${n} of the ${info.total} extracted particles`),
                  h('img', {id: 'particle-sample', alt: 'extracted particles', src: `/api/particles?dir=${q(job.dir)}&n=${n}`})));
  }
  const describe = () => {
    if (current) caption.textContent = `${current.m.micrograph}: ${current.picks.x.length} ${noun}, circles of ${diameter} Å`;
  };
  const draw = () => {
    if (!current) return;
    const {m, picks} = current, apix = m.pixel_size > 0 ? m.pixel_size : info.pixel_size > 0 ? info.pixel_size : 1;
    const r = String(diameter / 2 / apix);
    // Micrograph pixel x covers [x, x + 1) of the picture's coordinates (micrograph pixels): centres at x + 0.5.
    svg.replaceChildren(...picks.x.map((x, k) => {
      const c = document.createElementNS(svgNS, 'circle');
      c.setAttribute('cx', String(x + 0.5)); c.setAttribute('cy', String(picks.y[k] + 0.5)); c.setAttribute('r', r);
      if (info.fom && picks.fom) {
        const span = info.fom.max - info.fom.min;
        c.style.stroke = fomColour(span > 0 ? (picks.fom[k] - info.fom.min) / span : 1);
      }
      return c;
    }));
    describe();
  };
  input.addEventListener('change', () => { if (+input.value > 0) { diameter = +input.value; draw(); } });
  async function select(m) {
    const mine = ++token;
    remembered.set(job.dir, m.index);
    rows.forEach(tr => tr.classList.toggle('selected', tr.dataset.index === String(m.index)));
    current = null;
    svg.replaceChildren();
    caption.textContent = `${m.micrograph}: loading`;
    caption.className = '';
    try {
      const [picks, image] = await Promise.all([api(`/api/picks?dir=${q(job.dir)}&mic=${m.index}`),
                                                 fetch(`/api/micrograph?dir=${q(job.dir)}&mic=${m.index}&size=1024`)]);
      const bin = +image.headers.get('X-Bin');
      await showImage(img, image);
      if (mine !== token) return;
      svg.setAttribute('viewBox', `0 0 ${img.naturalWidth * bin} ${img.naturalHeight * bin}`);
      current = {m, picks};
      draw();
    } catch (e) {
      if (mine !== token) return;
      caption.textContent = `${m.micrograph}: ${e.message}`;
      caption.className = 'error';
    }
  }
  const again = info.micrographs.find(m => m.index === remembered.get(job.dir));
  const first = again || info.micrographs.find(m => m.count !== null && !m.micrograph_error);
  if (first) await select(first);
}

// ---------------- the pipeline as a graph (polled every 2 s) ----------------
// Jobs in columns by depth (the longest chain of inputs before them), edges from the job that wrote a file to
// each job that read it; a box per job coloured by status; a click opens the job.
let graphText = '';
async function refreshGraph() {
  let g;
  try { g = await api('/api/graph'); } catch (e) { return; }
  const text = JSON.stringify(g) + selected;
  if (text === graphText) return;
  graphText = text;
  const svgNS = 'http://www.w3.org/2000/svg', el = (tag, attrs) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  };
  const depth = new Map(g.jobs.map(j => [j.dir, 0]));
  for (let pass = 0; pass < g.jobs.length; pass++)  // longest path; the record is acyclic
    for (const e of g.edges) if (depth.has(e.from) && depth.has(e.to)) depth.set(e.to, Math.max(depth.get(e.to), depth.get(e.from) + 1));
  const columns = [];
  for (const j of g.jobs) (columns[depth.get(j.dir)] ??= []).push(j);
  const W = 150, H = 34, GX = 40, GY = 12, pos = new Map();
  columns.forEach((col, c) => col.forEach((j, r) => pos.set(j.dir, {x: 8 + c * (W + GX), y: 8 + r * (H + GY)})));
  const width = 16 + columns.length * (W + GX) - GX, height = 16 + Math.max(1, ...columns.map(c => c.length)) * (H + GY) - GY;
  const svg = el('svg', {id: 'graph', width, height, viewBox: `0 0 ${width} ${height}`});
  for (const e of g.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const path = el('path', {class: 'edge', d: `M${a.x + W},${a.y + H / 2} C${a.x + W + GX / 2},${a.y + H / 2} ${b.x - GX / 2},${b.y + H / 2} ${b.x},${b.y + H / 2}`,
                             'data-from': e.from, 'data-to': e.to});
    path.append(el('title', {}));
    path.lastChild.textContent = e.file;
    svg.append(path);
  }
  for (const j of g.jobs) {
    const {x, y} = pos.get(j.dir);
    const node = el('g', {class: `node status-${j.status}` + (selected === j.dir ? ' selected' : ''), 'data-dir': j.dir, transform: `translate(${x},${y})`});
    node.append(el('rect', {width: W, height: H, rx: 5}));
    const t1 = el('text', {x: 6, y: 14}), t2 = el('text', {x: 6, y: 28, class: 'alias'});
    t1.textContent = j.dir;
    t2.textContent = `${j.alias ? j.alias.split('/').slice(-2, -1)[0] + ' · ' : ''}${j.status}`;
    node.append(t1, t2);
    node.addEventListener('click', () => showJob({dir: j.dir, type: j.type, status: j.status}));
    svg.append(node);
  }
  $('#pipeline').replaceChildren(...(g.jobs.length ? [svg] : [h('span', {class: 'hint'}, 'No jobs recorded in default_pipeline.star yet.')]));
}
setInterval(refreshGraph, 2000);
refreshGraph();

// ---------------- a selection of 2D classes ----------------
async function showSelect(view, job) {
  let sel;
  try { sel = await api(`/api/selection?dir=${q(job.dir)}`); } catch (e) { return; }  // not a selection of classes
  const cls = [...sel.classes].sort((a, b) => (b.kept - a.kept) || b.count - a.count);
  const nkept = sel.classes.filter(c => c.kept).length;
  view.append(h('div', {class: 'panel', id: 'selection-summary'},
    `${sel.kept} of ${sel.total} particles kept, in ${nkept} of ${sel.classes.length} classes of ${sel.classification} iteration ${sel.iteration}` +
    (sel.auto ? ' (select --auto: contrast / median and edge ratio under each class, and how many of a kept class\'s particles passed its particle screen)' : '')),
    h('div', {class: 'gallery', id: 'selection'}, ...cls.map(c => h('figure', {class: c.kept ? 'kept' : 'rejected', 'data-class': String(c.class)},
      h('img', {src: `/api/class_image?dir=${q(sel.classification)}&iter=${sel.iteration}&k=${c.class}`, alt: `class ${c.class}`}),
      // A kept class may have lost some particles to select --auto's particle screen: say how many stay.
      h('figcaption', {}, `#${c.class}: ${c.count}${!c.kept ? '' : c.kept_count < c.count ? `, ${c.kept_count} kept` : ' kept'}`,
        ...(c.contrast_ratio !== undefined ? [h('br'), `${c.contrast_ratio.toFixed(2)} / ${c.edge_ratio.toFixed(2)}`] : []))))));
}

// ---------------- micrographs of MotionCorr and CtfFind jobs ----------------
// Trajectory of the whole-frame shifts (px) as an SVG: a line through the frames, a dot per frame, the first red.
function trajectory(m) {
  const svgNS = 'http://www.w3.org/2000/svg', S = 300, pad = 20;
  const svg = document.createElementNS(svgNS, 'svg');
  svg.id = 'trajectory';
  svg.setAttribute('width', S); svg.setAttribute('height', S);
  const xs = m.shift_x, ys = m.shift_y;
  const cx = (Math.min(...xs) + Math.max(...xs)) / 2, cy = (Math.min(...ys) + Math.max(...ys)) / 2;
  const span = Math.max(2, Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
  const X = x => S / 2 + (x - cx) / span * (S - 2 * pad), Y = y => S / 2 + (y - cy) / span * (S - 2 * pad);
  const line = document.createElementNS(svgNS, 'polyline');
  line.setAttribute('points', xs.map((x, k) => `${X(x).toFixed(1)},${Y(ys[k]).toFixed(1)}`).join(' '));
  svg.append(line);
  xs.forEach((x, k) => {
    const c = document.createElementNS(svgNS, 'circle');
    c.setAttribute('cx', X(x).toFixed(1)); c.setAttribute('cy', Y(ys[k]).toFixed(1)); c.setAttribute('r', k === 0 ? 4 : 2.5);
    c.setAttribute('class', k === 0 ? 'frame first' : 'frame');
    const t = document.createElementNS(svgNS, 'title');
    t.textContent = `frame ${m.frame[k]}: ${x.toFixed(2)}, ${ys[k].toFixed(2)} px`;
    c.append(t);
    svg.append(c);
  });
  const label = document.createElementNS(svgNS, 'text');
  label.setAttribute('x', 6); label.setAttribute('y', S - 6);
  label.textContent = `${xs.length} frames; the box spans ${span.toFixed(1)} px`;
  svg.append(label);
  return svg;
}

async function showMics(view, job) {
  const info = await api(`/api/mics?dir=${q(job.dir)}`);
  const cols = [['motion_total', 'motion (px)'], ['motion_early', 'early'], ['motion_late', 'late'], ['defocus_u', 'defocus U (Å)'],
                ['defocus_v', 'defocus V'], ['astigmatism', 'astig.'], ['ctf_max_resolution', 'fit to (Å)'], ['ctf_fom', 'FOM']]
    .filter(([k]) => info.micrographs.some(m => k in m));
  const fmt = (k, v) => v === undefined ? '' : k.startsWith('defocus') || k === 'astigmatism' ? Math.round(v) : v.toFixed(k === 'ctf_fom' ? 3 : 2);
  const rows = info.micrographs.map(m => h('tr', {class: 'mic', 'data-index': String(m.index), title: m.micrograph, onclick: () => select(m)},
    h('td', {}, m.micrograph.split('/').pop()), ...cols.map(([k]) => h('td', {class: 'count'}, fmt(k, m[k])))));
  const caption = h('div', {id: 'mic-caption'});
  const figure = h('div', {class: 'mic-figures'});
  view.append(h('div', {class: 'panel', id: 'mics-summary'}, `${info.micrographs.length} micrographs (${info.source})`),
    h('div', {class: 'picks-layout'},
      h('div', {class: 'mic-list'}, h('table', {id: 'micrographs'},
        h('thead', {}, h('tr', {}, h('th', {}, 'micrograph'), ...cols.map(([, t]) => h('th', {}, t)))), h('tbody', {}, ...rows))),
      h('div', {class: 'picks-figure'}, caption, figure)));
  let token = 0;
  async function select(m) {
    const mine = ++token;
    remembered.set(job.dir, m.index);
    rows.forEach(tr => tr.classList.toggle('selected', tr.dataset.index === String(m.index)));
    caption.textContent = `${m.micrograph}: loading`;
    caption.className = '';
    try {
      const [detail, image] = await Promise.all([api(`/api/mics?dir=${q(job.dir)}&mic=${m.index}`),
                                                  fetch(`/api/micrograph?dir=${q(job.dir)}&mic=${m.index}&size=512`)]);
      const img = h('img', {id: 'micrograph', alt: 'micrograph'});
      await showImage(img, image);
      if (mine !== token) return;
      const parts = [h('figure', {}, img, h('figcaption', {}, 'the micrograph (low-pass 20 Å)'))];
      if (detail.shift_x) parts.push(h('figure', {}, trajectory(detail), h('figcaption', {}, 'whole-frame trajectory')));
      if (detail.ctf_png) parts.push(h('figure', {}, h('img', {id: 'ctf-fit', alt: 'CTF fit', src: `/files/${detail.ctf_png}`}),
                                       h('figcaption', {}, 'power spectrum (left) and the fitted CTF (right)')));
      figure.replaceChildren(...parts);
      const d = detail;
      caption.textContent = `${d.micrograph}` + (d.motion_total !== undefined ? `: motion ${d.motion_total.toFixed(1)} px` : '') +
        (d.defocus_u !== undefined ? `, defocus ${Math.round(d.defocus_u)} / ${Math.round(d.defocus_v)} Å at ${d.defocus_angle.toFixed(0)}°` : '');
    } catch (e) {
      if (mine !== token) return;
      caption.textContent = `${m.micrograph}: ${e.message}`;
      caption.className = 'error';
    }
  }
  if (info.micrographs.length) await select(info.micrographs.find(m => m.index === remembered.get(job.dir)) || info.micrographs[0]);
}

// The micrograph chosen in each job's view, kept when the view is drawn again.
const remembered = new Map();
// The job shown and the signature of its results when drawn: a job whose results change (a running job's new
// iteration or micrographs, its end) is drawn again by itself.
let shown = null;
const signature = job => `${job.status}|${job.modified}|${job.files.length}`;
setInterval(async () => {
  if (!shown || shown.drawing) return;
  const now = shown;
  let job;
  try { job = await api(`/api/job?dir=${q(now.dir)}`); } catch (e) { return; }
  if (shown === now && !now.drawing && signature(job) !== now.sig)
    showJob({dir: job.dir, type: job.type, status: job.status, detail: job.detail}, true);
}, 2000);

// Draws a job's view; a redraw (its results changed) is built aside and then put in place of the old one.
async function showJob(j, redraw = false) {
  selected = j.dir;
  const mine = shown = {dir: j.dir, sig: null, drawing: true};
  const page = $('#view');
  const view = redraw ? h('main', {}) : page;
  const scroll = window.scrollY;
  view.replaceChildren(h('h2', {}, `${j.dir} (${j.type}, ${j.status})`));
  if (j.detail) view.append(h('p', {class: 'error'}, j.detail));
  if (redraw) {
    view.style.cssText = `position: absolute; visibility: hidden; left: 0; top: 0; width: ${page.clientWidth}px`;
    page.after(view);  // attached (hidden) while it loads, so that its elements can be measured and found
  }
  try {
    const job = await api(`/api/job?dir=${q(j.dir)}`);
    mine.sig = signature(job);
    if (job.type === 'Class2D') await showClass2D(view, job);
    else if (['Refine3D', 'Class3D', 'InitialModel'].includes(job.type)) await show3D(view, job);
    else if (['AutoPick', 'Extract'].includes(job.type)) await showPicks(view, job);
    else if (['MotionCorr', 'CtfFind'].includes(job.type)) await showMics(view, job);
    else if (job.type === 'Select' && job.files.some(f => f.endsWith('.star') && f !== 'job.star')) await showSelect(view, job);
    else if (job.files.some(f => /_locres\.mrc$/.test(f))) await showLocres(view, job);
    else if (job.type === 'PostProcess') await showFsc(view, job);
    view.append(downloads(job));
  } catch (e) {
    view.append(h('p', {class: 'error'}, e.message));
  }
  if (redraw) {
    view.remove();
    if (shown === mine) page.replaceChildren(...view.childNodes);
    window.scrollTo(0, scroll);
  }
  mine.drawing = false;
  refreshJobs();
  refreshGraph();
}
window.regulaShowJob = dir => showJob({dir, type: '', status: ''});
