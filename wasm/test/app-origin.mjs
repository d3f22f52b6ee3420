// Test helpers shared by the browser tests: a page origin of the tests' own and polling.
import fs from 'node:fs';
import path from 'node:path';

const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.html': 'text/html', '.json': 'application/json' };

/**
 * A browser context whose origin http://localhost:9 (localhost: a secure context, so OPFS is
 * there) serves `webDir`'s files from disk, and an empty page at `/`: the page (and its OPFS
 * copy) stays reachable while the node is down.
 */
export async function appContext(browser, webDir) {
  const ctx = await browser.newContext();
  await serveApp(ctx, webDir);
  return ctx;
}

/** The same origin on a context made elsewhere (a persistent one, say). */
export async function serveApp(ctx, webDir) {
  await ctx.route('http://localhost:9/**', (r) => {
    const p = new URL(r.request().url()).pathname;
    if (p === '/') return r.fulfill({ status: 200, contentType: 'text/html', body: '<!doctype html><title>app</title>' });
    const file = path.join(webDir, path.normalize(p));
    if (!file.startsWith(webDir) || !fs.existsSync(file)) return r.fulfill({ status: 404, body: 'no' });
    r.fulfill({ status: 200, body: fs.readFileSync(file), contentType: types[path.extname(file)] ?? 'application/octet-stream' });
  });
  return ctx;
}

/** Polls `f(arg)` (which may be async) in the page until it returns something truthy. */
export async function until(page, f, arg, ms = 30000) {
  const t0 = Date.now();
  for (;;) {
    if (await page.evaluate(f, arg)) return;
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${f}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
