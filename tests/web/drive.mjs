// Drives the web app in headless Chromium (puppeteer-core) through the page's own controls, for
// tests/test_web.py, benchmarks/web_bench.py and examples/web_screenshot.py. One job (JSON: argv[2],
// or a file name) in, one JSON line out.
//
// job: { url, chromium, timeout_s, chromium_args: [], viewport: [w, h], debug, steps: [step, ...] }
// steps, in order (after the page has loaded its model, or refused it):
//   { upload: '#content-file', files: [PATH, ...] }   file inputs (wait: the page has decoded them;
//                                                     images: false for other inputs, e.g. #model-folder)
//   { set: { element id: value } }                    form fields (a change event each)
//   { click: '#start', chooser: [PATH, ...] }         with chooser: the click must open a file chooser,
//                                                     given those files (images: false as for upload)
//   { tabTo: '#content-choose', max: 30 }             presses Tab until that element has the focus
//                                                     (result.tabs[selector]: how many presses)
//   { press: 'Enter', chooser: [PATH, ...] }           a key on the focused element (chooser: as click)
//   { until: 'JS expression over window.nstApp (a)' } waits until it is true
//   { snapshot: NAME }                                the page's state now, into result.snapshots[NAME]
//   { screenshot: PATH, fullPage: bool }
//   { download: DIR }                                 clicks Download, waits for the file in DIR
// result: { state, message, messageKind, records, backend, model, heap, initDigest, resultSize, progress,
//           hint, content, styles, badges, tabs, snapshots, pageErrors, consoleErrors, error? }
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(join(root, 'package.json'));
const puppeteer = require('puppeteer-core');

const job = JSON.parse(process.argv[2].startsWith('{') ? process.argv[2] : readFileSync(process.argv[2], 'utf8'));
const timeout = (job.timeout_s || 300) * 1000;
const result = { snapshots: {}, pageErrors: [], consoleErrors: [] };

function snapshotIn(page) {
  return page.evaluate(() => {
    const a = window.nstApp;
    if (!a) return { state: 'no page state' };
    return {
      state: a.state, message: a.message, messageKind: a.messageKind, records: a.records, backend: a.backend,
      model: a.model, heap: a.heap, plan: a.plan ?? null, initDigest: a.initDigest, resultSize: a.resultSize, hasImage: a.hasImage,
      progress: document.getElementById('progress-text')?.textContent,
      hint: document.getElementById('start-hint')?.textContent, content: a.content?.name ?? null, styles: (a.styles || []).map((x) => x.name),
      badges: { backend: document.getElementById('backend')?.textContent, model: document.getElementById('model')?.textContent },
    };
  });
}

const browser = await puppeteer.launch({
  executablePath: job.chromium || '/usr/bin/chromium',
  headless: true,
  dumpio: !!job.debug,
  protocolTimeout: timeout,
  // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start
  args: ['--no-sandbox', '--disable-dev-shm-usage', ...(job.chromium_args || [])],
});
let page;
try {
  page = await browser.newPage();
  const [w, h] = job.viewport || [1280, 900];
  await page.setViewport({ width: w, height: h });
  // an uncaught exception in the page ends the job at once (a wait for the page's state would hang)
  let failed;
  const pageFailed = new Promise((_, reject) => { failed = reject; });
  pageFailed.catch(() => {});
  page.on('pageerror', (e) => {
    result.pageErrors.push(String(e.message || e));
    failed(new Error(`uncaught exception in the page: ${e.message || e}`));
  });
  const until = (fn, ...args) => Promise.race([page.waitForFunction(fn, { timeout, polling: 50 }, ...args), pageFailed]);
  page.on('console', (m) => {
    if (m.type() === 'error') result.consoleErrors.push(m.text());
    if (job.debug) process.stderr.write(`console.${m.type()}: ${m.text()}\n`);
  });
  await page.goto(job.url, { waitUntil: 'load', timeout });
  await until(() => ['ready', 'model-error', 'error'].includes(window.nstApp?.state));
  for (const step of job.steps || []) {
    if (step.upload) {
      const before = await page.evaluate(() => window.nstApp.decoded);
      await (await page.$(step.upload)).uploadFile(...step.files);
      // decoding is asynchronous: wait until the page has decoded each file (or said what is wrong)
      if (step.images !== false) await until((n) => window.nstApp.decoded >= n, before + step.files.length);
    } else if (step.set) {
      for (const [id, value] of Object.entries(step.set)) {
        await page.$eval(`#${id}`, (el, v) => { el.value = String(v); el.dispatchEvent(new Event('change', { bubbles: true })); }, value);
      }
    } else if (step.chooser) {
      // a click or a key that must open a file chooser: it gets the files, and the page decodes them.
      // Interception is switched on (and awaited) on a session of our own before the key is sent:
      // page.waitForFileChooser sends it alongside, and a key can beat it (a native chooser, cancelled
      // at once in headless Chromium: seen 2 times in 3).
      const before = await page.evaluate(() => window.nstApp.decoded);
      const what = step.click ? `a click on ${step.click}` : `${step.press} on the focused element`;
      const client = await page.createCDPSession();
      await client.send('Page.enable');
      await client.send('Page.setInterceptFileChooserDialog', { enabled: true });
      const opened = new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${what} opened no file chooser`)), 10000);
        client.once('Page.fileChooserOpened', (e) => { clearTimeout(t); resolve(e); });
      });
      opened.catch(() => {});
      if (step.click) await page.click(step.click);
      else await page.keyboard.press(step.press);
      const { backendNodeId } = await opened;
      await client.send('DOM.setFileInputFiles', { files: step.chooser, backendNodeId });
      await client.send('Page.setInterceptFileChooserDialog', { enabled: false });
      await client.detach();
      if (step.images !== false) await until((n) => window.nstApp.decoded >= n, before + step.chooser.length);
    } else if (step.click) {
      await page.click(step.click);
    } else if (step.tabTo) {
      result.tabs = result.tabs || {};
      let n = 0;
      while (!(await page.evaluate((sel) => document.activeElement?.matches(sel), step.tabTo))) {
        if (++n > (step.max || 30)) throw new Error(`${step.tabTo} never had the focus after ${step.max || 30} Tab presses`);
        await page.keyboard.press('Tab');
      }
      result.tabs[step.tabTo] = n;
    } else if (step.press) {
      await page.keyboard.press(step.press);
    } else if (step.until) {
      await until(`(() => { const a = window.nstApp; return ${step.until}; })()`);
    } else if (step.snapshot) {
      result.snapshots[step.snapshot] = await snapshotIn(page);
    } else if (step.screenshot) {
      await page.evaluate(() => window.scrollTo(0, 0)); // clicks scroll the page
      await page.screenshot({ path: step.screenshot, fullPage: !!step.fullPage });
    } else if (step.download) {
      const client = await page.createCDPSession();
      await client.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: step.download, eventsEnabled: true });
      const done = new Promise((resolve) => client.on('Browser.downloadProgress', (e) => {
        if (e.state === 'completed' || e.state === 'canceled') resolve(e.state);
      }));
      await page.click('#download');
      result.download = await Promise.race([done, new Promise((r) => setTimeout(() => r('timeout'), 30000))]);
    }
  }
  Object.assign(result, await snapshotIn(page));
} catch (e) {
  result.error = String(e.message || e).split('\n')[0];
  try {
    Object.assign(result, await snapshotIn(page));
  } catch { /* the page is gone */ }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result) + '\n');
