// Opens the WebRTC viewer page in Debian's headless Chromium and reports what the page sees, as
// JSON lines on stdout: {"t": ms since start, ...window.vcb} every --every ms, then a final
// {"result": ...} line. Exits 0 when --frames frames were decoded within --timeout seconds (and,
// with --hold, after holding the page open that long), 1 otherwise.
//
//   node viewer.mjs --url 'http://127.0.0.1:8000/?device=cam1' [--frames 90] [--timeout 30]
//                   [--hold 0] [--every 500]
import { chromium } from 'playwright-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const url = args.url;
const frames = Number(args.frames ?? 90);
const timeout = Number(args.timeout ?? 30) * 1000;
const hold = Number(args.hold ?? 0) * 1000;
const every = Number(args.every ?? 500);
if (!url) {
  console.error('viewer.mjs: --url is required');
  process.exit(2);
}

const t0 = Date.now();
const say = (o) => process.stdout.write(JSON.stringify({ t: Date.now() - t0, ...o }) + '\n');
let browser;
const hardStop = setTimeout(() => {
  say({ result: { ok: false, error: 'viewer.mjs: overall time limit reached' } });
  process.exit(1);
}, timeout + hold + 20000);

try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run',
      '--autoplay-policy=no-user-gesture-required',
    ],
    timeout: 20000,
  });
  const page = await browser.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') say({ console: m.type(), text: m.text() });
  });
  page.on('pageerror', (e) => say({ pageerror: String(e) }));
  await page.goto(url, { timeout: 15000 });
  const snapshot = () => page.evaluate(() => ({ ...(window.vcb || {}) }));
  let state = {};
  let firstFrameMs = null;
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    state = await snapshot();
    if (firstFrameMs === null && (state.framesDecoded || 0) > 0) firstFrameMs = Date.now() - t0;
    say(state);
    if ((state.framesDecoded || 0) >= frames) break;
    await new Promise((r) => setTimeout(r, every));
  }
  const enough = (state.framesDecoded || 0) >= frames;
  let color = enough ? await page.evaluate(() => window.vcbSampleColor && window.vcbSampleColor()) : null;
  const holdEnd = Date.now() + (enough ? hold : 0);
  const during = [];
  while (Date.now() < holdEnd) {
    await new Promise((r) => setTimeout(r, every));
    state = await snapshot();
    during.push(state.framesDecoded || 0);
    say(state);
  }
  if (hold > 0 && enough) color = await page.evaluate(() => window.vcbSampleColor && window.vcbSampleColor());
  say({ result: { ok: enough, frames: state.framesDecoded || 0, firstFrameMs, color, state } });
  clearTimeout(hardStop);
  await browser.close();
  process.exit(enough ? 0 : 1);
} catch (e) {
  say({ result: { ok: false, error: String(e) } });
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
