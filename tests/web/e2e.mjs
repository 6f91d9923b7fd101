// End-to-end test of the `regula serve` page in headless Chromium (Debian's chromium, driven by
// playwright-core from npm). Run by tests/python/test_web.py:
//   node tests/web/e2e.mjs URL OUT_DIR NODE_MODULES_DIR POSTPROCESS_JOB_DIR [LOCRES_JOB_DIR [AUTOPICK_JOB_DIR...]]
// Prints one JSON line with what it measured; the Python side asserts on it. LOCRES_JOB_DIR: a local-resolution
// job whose isosurface must be coloured ("" for none). AUTOPICK_JOB_DIR...: picking jobs (AutoPick, Extract) whose
// micrographs are shown one after the other with their picks. Environment: MIC_JOBS, MotionCorr and CtfFind jobs
// (comma-separated) opened from the pipeline graph, each micrograph with its trajectory and CTF fit; SELECT_JOBS,
// Select jobs whose classes are shown kept or rejected; LIVE_JOB, LIVE_JOB_NEXT, LIVE_PROJECT: a running job whose list
// is replaced by a longer one during the test.
import { createRequire } from 'module';

const [url, outDir, modules, postprocessDir, locresDir, ...pickDirs] = process.argv.slice(2);
const require = createRequire(modules + '/');
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'],
});
const result = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
  const errors = [];
  page.on('pageerror', e => errors.push(String(e)));
  // Console errors (failed requests included), counted from the picking views on.
  const consoleErrors = [];
  page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  await page.goto(url);
  // Generous: loading three.js takes seconds on a busy machine.
  await page.waitForSelector('tr.job[data-dir="Class2D/job002/"]', { timeout: 60000 });

  // 2D classification: the gallery's images load.
  await page.click('tr.job[data-dir="Class2D/job002/"]');
  await page.waitForSelector('#gallery img', { timeout: 60000 });
  await page.waitForFunction(() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0),
                             null, { timeout: 60000 });
  result.gallery_images = await page.$$eval('#gallery img', x => x.length);
  result.gallery_captions = await page.$$eval('#gallery figcaption', x => x.map(e => e.textContent));

  // Refinement: FSC plot, 3D view, slices.
  await page.click('tr.job[data-dir="Refine3D/job003/"]');
  await page.waitForSelector('#fsc', { timeout: 60000 });
  await page.waitForSelector('#view3d', { timeout: 60000 });
  await page.waitForTimeout(1000);
  result.fsc_colours = await page.evaluate(() => {
    const c = document.querySelector('#fsc'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const s = new Set();
    for (let i = 0; i < d.length; i += 4) s.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    return s.size;
  });
  // The WebGL canvas (preserveDrawingBuffer) copied into a 2D canvas: pixels that are not background.
  result.view3d_drawn = await page.evaluate(() => {
    const c = document.querySelector('#view3d'), t = document.createElement('canvas');
    t.width = c.width; t.height = c.height;
    const x = t.getContext('2d');
    x.drawImage(c, 0, 0);
    const d = x.getImageData(0, 0, t.width, t.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) n++;
    return n;
  });
  result.view3d_pixels = 420 * 420;
  result.has_slices = !!(await page.$('#slices'));
  await page.screenshot({ path: outDir + '/refine3d.png' });

  // Post-processing: FSC curves and the Guinier plot.
  await page.click(`tr.job[data-dir="${postprocessDir}"]`);
  await page.waitForSelector('#guinier', { timeout: 60000 });
  result.has_guinier = true;

  // Local resolution: the isosurface is coloured (hues of the drawn pixels, in 12 bins) and has a legend.
  if (locresDir) {
    await page.click(`tr.job[data-dir="${locresDir}"]`);
    await page.waitForSelector('#locres-legend', { timeout: 60000 });
    await page.waitForSelector('#view3d', { timeout: 60000 });
    await page.waitForTimeout(1000);
    result.locres_hues = await page.evaluate(() => {
      const c = document.querySelector('#view3d'), t = document.createElement('canvas');
      t.width = c.width; t.height = c.height;
      const x = t.getContext('2d');
      x.drawImage(c, 0, 0);
      const d = x.getImageData(0, 0, t.width, t.height).data;
      const bins = new Array(12).fill(0);
      let drawn = 0;
      for (let i = 0; i < d.length; i += 4) {
        const r = d[i] / 255, g = d[i + 1] / 255, b = d[i + 2] / 255, mx = Math.max(r, g, b), mn = Math.min(r, g, b);
        if (mx > 0.94 && mn > 0.94) continue;  // background
        drawn++;
        if (mx - mn < 0.15) continue;           // grey: no hue
        let hue = mx === r ? (g - b) / (mx - mn) : mx === g ? 2 + (b - r) / (mx - mn) : 4 + (r - g) / (mx - mn);
        hue = ((hue * 60) + 360) % 360;
        bins[Math.floor(hue / 30)]++;
      }
      return { drawn, bins };
    });
    await page.screenshot({ path: outDir + '/locres.png' });
  }

  // Picking jobs: every micrograph of the list in turn; the image loads and is not blank, one circle per pick.
  const firstConsoleError = consoleErrors.length;
  result.picks = [];
  result.picks_jobs = [];
  for (const dir of pickDirs) {
    await page.click(`tr.job[data-dir="${dir}"]`);
    await page.waitForSelector('#micrographs tr.mic', { timeout: 60000 });
    const n = await page.$$eval('#micrographs tr.mic', x => x.length);
    // The job's figure-of-merit histogram and, for Extract, the sample of particles (once loaded).
    if (await page.$('#particle-sample'))
      await page.waitForFunction(() => { const i = document.querySelector('#particle-sample'); return i.complete && i.naturalWidth > 0; },
                                 null, { timeout: 60000 });
    const job = await page.evaluate(() => {
      const s = document.querySelector('#particle-sample');
      const bars = [...document.querySelectorAll('#fom-histogram rect.fom-bar')].map(e => e.getBoundingClientRect());
      return { bars: bars.length, bar_heights: bars.map(r => r.height), bar_widths: bars.map(r => r.width),
               sample_width: s ? s.naturalWidth : 0 };
    });
    for (let i = 0; i < n; i++) {
      await page.click(`#micrographs tr.mic[data-index="${i}"]`);
      await page.waitForFunction(i => {
        const row = document.querySelector('#micrographs tr.mic.selected'), img = document.querySelector('#micrograph');
        return row && row.dataset.index === String(i) && img.complete && img.naturalWidth > 0 &&
               /: \d+ (picks|particles), /.test(document.querySelector('#pick-count').textContent);
      }, i, { timeout: 60000 });
      result.picks.push(await page.evaluate(() => {
        const img = document.querySelector('#micrograph'), c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const x = c.getContext('2d');
        x.drawImage(img, 0, 0);
        const d = x.getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0;
        for (let k = 0; k < d.length; k += 4) { s += d[k]; s2 += d[k] * d[k]; }
        const n = d.length / 4, svg = document.querySelector('#picks'), box = svg.getBoundingClientRect(), ib = img.getBoundingClientRect();
        const circles = [...svg.querySelectorAll('circle')];
        return {
          micrograph: document.querySelector('#micrographs tr.mic.selected').title.split('\n')[0],
          listed: +document.querySelector('#micrographs tr.mic.selected td.count').textContent,
          caption: document.querySelector('#pick-count').textContent,
          width: img.naturalWidth, height: img.naturalHeight, grey_std: Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)),
          circles: circles.length,
          // circles drawn inside the picture (screen pixels), and the overlay laid exactly over the image
          circles_inside: circles.filter(e => { const r = e.getBoundingClientRect(); return r.width > 2 && r.left >= ib.left - r.width &&
                                                  r.right <= ib.right + r.width && r.top >= ib.top - r.height && r.bottom <= ib.bottom + r.height; }).length,
          overlay_matches: Math.abs(box.width - ib.width) < 1 && Math.abs(box.height - ib.height) < 1,
          colours: [...new Set(circles.map(e => getComputedStyle(e).stroke))],
        };
      }));
      if (i === 0) await page.screenshot({ path: `${outDir}/picks_${dir.replace(/\W+/g, '_')}.png`, fullPage: true });
    }
    const shown = result.picks.slice(result.picks.length - n);
    job.circle_colours = new Set(shown.flatMap(p => p.colours)).size;
    result.picks_jobs.push(job);
  }
  result.picks_console_errors = consoleErrors.slice(firstConsoleError);

  // The pipeline graph: one box per recorded job, one curve per edge; a click on a box opens that job.
  await page.waitForSelector('#graph g.node', { timeout: 60000 });
  result.graph = await page.evaluate(() => ({
    nodes: [...document.querySelectorAll('#graph g.node')].map(n => n.dataset.dir),
    edges: [...document.querySelectorAll('#graph path.edge')].map(e => [e.dataset.from, e.dataset.to]),
  }));
  // MotionCorr and CtfFind jobs (MIC_JOBS, comma-separated), opened from the graph: every micrograph in turn, its
  // picture, the trajectory (a dot per frame) and the CTF diagnostic image.
  result.mics = [];
  for (const dir of (process.env.MIC_JOBS || '').split(',').filter(Boolean)) {
    await page.click(`#graph g.node[data-dir="${dir}"]`);
    await page.waitForSelector('#micrographs tr.mic', { timeout: 60000 });
    const heading = await page.$eval('#view h2', e => e.textContent);
    const n = await page.$$eval('#micrographs tr.mic', x => x.length);
    for (let i = 0; i < n; i++) {
      await page.click(`#micrographs tr.mic[data-index="${i}"]`);
      await page.waitForFunction(i => {
        const row = document.querySelector('#micrographs tr.mic.selected'), img = document.querySelector('#micrograph');
        const ctf = document.querySelector('#ctf-fit');
        return row && row.dataset.index === String(i) && img && img.complete && img.naturalWidth > 0 &&
               !/loading/.test(document.querySelector('#mic-caption').textContent) && (!ctf || (ctf.complete && ctf.naturalWidth > 0));
      }, i, { timeout: 60000 });
      result.mics.push(await page.evaluate(([dir, heading]) => {
        const ctf = document.querySelector('#ctf-fit'), t = document.querySelector('#trajectory');
        return { dir, heading, micrograph: document.querySelector('#micrographs tr.mic.selected').title,
                 caption: document.querySelector('#mic-caption').textContent,
                 width: document.querySelector('#micrograph').naturalWidth,
                 frames: t ? t.querySelectorAll('circle.frame').length : 0,
                 trajectory_width: t ? t.getBoundingClientRect().width : 0,
                 ctf_width: ctf ? ctf.naturalWidth : 0 };
      }, [dir, heading]));
    }
    await page.screenshot({ path: `${outDir}/mics_${dir.replace(/\W+/g, '_')}.png`, fullPage: true });
  }

  // Select jobs (SELECT_JOBS, comma-separated): the classes with their images, marked kept or rejected.
  result.selections = [];
  for (const dir of (process.env.SELECT_JOBS || '').split(',').filter(Boolean)) {
    await page.click(`tr.job[data-dir="${dir}"]`);
    await page.waitForSelector('#selection figure', { timeout: 60000 });
    await page.waitForFunction(() => [...document.querySelectorAll('#selection img')].every(i => i.complete && i.naturalWidth > 0),
                               null, { timeout: 60000 });
    result.selections.push(await page.evaluate(() => ({
      loaded: [...document.querySelectorAll('#selection img')].filter(i => i.naturalWidth > 0).length,
      kept: [...document.querySelectorAll('#selection figure.kept')].map(f => +f.dataset.class),
      rejected: [...document.querySelectorAll('#selection figure.rejected')].map(f => +f.dataset.class),
    })));
  }

  // A running job's view redraws itself when its results change (LIVE_JOB: a CtfFind job with one micrograph;
  // LIVE_JOB_NEXT: its list with two, moved into place here), keeping the chosen micrograph.
  if (process.env.LIVE_JOB) {
    const dir = process.env.LIVE_JOB;
    await page.click(`tr.job[data-dir="${dir}"]`);
    await page.waitForSelector('#micrographs tr.mic.selected', { timeout: 60000 });
    const before = await page.$$eval('#micrographs tr.mic', x => x.length);
    const fs = await import('fs');
    const list = new URL(`file://${process.env.LIVE_PROJECT}/${dir}micrographs_ctf.star`).pathname;
    fs.copyFileSync(process.env.LIVE_JOB_NEXT, list + '.tmp');
    fs.renameSync(list + '.tmp', list);
    await page.waitForFunction(() => document.querySelectorAll('#micrographs tr.mic').length === 2, null, { timeout: 30000 });
    await page.waitForFunction(() => { const i = document.querySelector('#micrograph'); return i && i.complete && i.naturalWidth > 0; },
                               null, { timeout: 30000 });
    result.live = { before, after: await page.$$eval('#micrographs tr.mic', x => x.length),
                    selected_after: await page.$eval('#micrographs tr.mic.selected', e => e.dataset.index),
                    image_after: await page.$eval('#micrograph', i => i.naturalWidth > 0) };
  }

  // A running job: its progress cell changes while the test appends to its progress file.
  const cell = 'tr.job[data-dir="Running/job099/"] td.progress';
  await page.waitForSelector(cell, { timeout: 60000 });
  const first = await page.$eval(cell, e => e.textContent);
  let now = first;
  for (let i = 0; i < 60 && now === first; i++) {
    await page.waitForTimeout(250);
    now = await page.$eval(cell, e => e.textContent);
  }
  result.progress_first = first;
  result.progress_later = now;
  result.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
