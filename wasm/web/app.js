// @ts-check
import { openReplica } from './hivesync.js';
import { pageToken, saveToken } from './token.js';

/** An element of the page by id (the form fields among them are inputs). */
const $ = (/** @type {string} */ id) => /** @type {HTMLInputElement} */ (document.getElementById(id));
/** @type {(s: unknown) => string} */
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => /** @type {Record<string, string>} */ ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
/** @type {(s: string) => string} */
const snippet = (s) => esc(s).replace(/\[/g, '<mark>').replace(/\]/g, '</mark>');

// The token (token.js: ?token= or the field, kept for the tab, shared with /status).
const token = pageToken();
$('token').value = token ?? '';
// The sync client takes its token when the replica opens: another token reloads the page.
$('auth').addEventListener('submit', (e) => {
  e.preventDefault();
  saveToken($('token').value);
  location.reload();
});

performance.mark('app-start');
const db = await openReplica({ url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/sync`, name: 'demo', token });
performance.mark('replica-open');
$('storage').textContent = db.opened.storage;
/** @type {any} */ (window).hivesync = db; // for the console (and the end-to-end test)

/** @param {import('./hivesync.js').Status} s */
function showStatus(s) {
  const state = s.live ? 'live' : s.online ? 'connecting' : 'offline';
  $('status').textContent = s.error ? `stopped: ${s.error}` : state;
  $('status').className = `pill ${state}`;
  // (String(n) is what textContent makes of a number.)
  $('seq').textContent = String(s.seq);
  $('lag').textContent = String(s.lag);
  $('pending').textContent = String(s.pending);
  // (pendingAgeMs is a number while writes are pending.)
  $('pending-age').textContent = s.pending ? ` oldest ${Math.round(/** @type {number} */ (s.pendingAgeMs) / 1000)} s${s.uploadError ? ` · ${s.uploadError}` : ''}` : '';
}

// What a first look at an empty database needs: where rows come from.
const EMPTY_HINT = `<li class="hint muted">No entities yet. Add one above (it is written here first, then at the node), or at the node:
  <code>hivesync put entity '{"name":"Ada Lovelace"}'</code>; it shows here at once.</li>`;

async function renderRecent() {
  // A name being edited is not redrawn under the cursor (the next change redraws it).
  if ($('recent').contains(document.activeElement)) return;
  const r = await db.sql('SELECT ns, id, kind, name FROM entities ORDER BY updated_at DESC, rowid DESC LIMIT 20');
  if (r.rows.length === 0) { $('recent').innerHTML = EMPTY_HINT; return; }
  // The namespaces seen so far, offered by the add form.
  const seen = await db.sql('SELECT DISTINCT ns FROM entities ORDER BY ns LIMIT 50');
  $('namespaces').innerHTML = seen.rows.map(([ns]) => `<option value="${esc(ns)}">`).join('');
  // Rows written here and not yet confirmed by the node are marked.
  const pending = new Set((await db.pending()).flatMap((p) => p.ops.map((o) => `${o.ns ?? 'default'}/${o.data?.id ?? o.id}`)));
  $('recent').innerHTML = r.rows.map(([ns, id, kind, name]) =>
    `<li data-id="${esc(id)}"${pending.has(`${ns}/${id}`) ? ' class="pending"' : ''}><b class="name" contenteditable="plaintext-only" spellcheck="false" data-ns="${esc(ns)}" data-id="${esc(id)}" data-name="${esc(name)}" title="click to rename: a patch, so what others change meanwhile stays">${esc(name)}</b> <small>${esc(kind)} · ${esc(ns)}/${esc(id)}` +
    `${pending.has(`${ns}/${id}`) ? ' · pending' : ''}</small></li>`).join('');
}

// Renaming a row writes a patch of its name alone: an edit of another field made elsewhere
// meanwhile (offline too) survives both here and at the node.
$('recent').addEventListener('keydown', (e) => {
  const el = /** @type {HTMLElement} */ (e.target);
  if (el.classList?.contains('name') && e.key === 'Enter') { e.preventDefault(); el.blur(); }
});
$('recent').addEventListener('focusout', async (e) => {
  const el = /** @type {HTMLElement} */ (e.target);
  if (!el.classList?.contains('name')) return;
  const name = (el.textContent ?? '').trim();
  const { ns, id, name: was } = el.dataset;
  if (!name || name === was || !ns || !id) { el.textContent = was ?? ''; return; }
  try {
    await db.patch('entity', id, { name }, { ns });
  } catch (err) { $('error').textContent = /** @type {Error} */ (err).message; }
  await renderRecent();
});

$('add').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('add-name').value.trim();
  const ns = $('add-ns').value.trim() || 'default';
  if (!name) return;
  try {
    await db.write([{ op: 'upsert', kind: 'entity', ns, data: { kind: 'item', name } }]);
    $('add-name').value = '';
    await renderRecent();
  } catch (err) { $('error').textContent = /** @type {Error} */ (err).message; }
});

/**
 * @param {string} ns
 * @param {string} id
 */
async function similar(ns, id) {
  const models = await db.models();
  for (const { model } of models) {
    const v = await db.get('vector', ns, id, model);
    if (!v) continue;
    const hits = await db.knn({ model, embedding: v.embedding, k: 10, ns });
    $('mode').textContent = `nearest to ${id} by ${model} (cosine)`;
    $('results').innerHTML = hits.map((h) =>
      `<li data-id="${esc(h.subject)}">${esc(h.subject)} <small>${esc(h.kind)} · distance ${h.distance.toFixed(4)}</small></li>`).join('');
    return;
  }
}

async function renderSearch() {
  const text = $('q').value.trim();
  if (!text) { $('results').innerHTML = ''; $('mode').textContent = ''; return; }
  let hits = await db.search({ text, limit: 20 });
  let mode = 'full-text';
  const models = await db.models();
  // With vectors present, fuse the text hits with the neighbours of the best hit's vector.
  if (models.length && hits.length) {
    const top = hits[0];
    const v = await db.get('vector', top.ns, top.id, models[0].model);
    if (v) {
      const fused = await db.hybrid({ text, limit: 20 }, { model: models[0].model, embedding: v.embedding, k: 20 }, 20);
      const byId = new Map(hits.map((h) => [h.ns + '/' + h.id, h]));
      hits = fused.map((f) => byId.get(f.ns + '/' + f.id) ?? { ns: f.ns, id: f.id, name: f.id, kind: 'similar', snippet: '', record: 'entity', score: f.score });
      mode = `hybrid: full-text + ${models[0].model} vectors`;
    }
  }
  $('mode').textContent = `${hits.length} hits · ${mode}`;
  if (hits.length === 0) {
    $('results').innerHTML = `<li class="hint muted">No entity or note matches “${esc(text)}” in this replica${(await db.status()).live ? '' : ' (it is not live yet: more may come)'}.</li>`;
    return;
  }
  $('results').innerHTML = hits.map((h) =>
    `<li data-id="${esc(h.id)}"><b>${esc(h.name || h.id)}</b> <small>${esc(h.record)} ${esc(h.kind)} · ${esc(h.ns)}/${esc(h.id)}</small>` +
    `${models.length ? ` <button class="link" data-similar="${esc(h.ns)}|${esc(h.id)}">similar</button>` : ''}` +
    `<br><span>${snippet(h.snippet)}</span></li>`).join('');
}

$('results').addEventListener('click', (e) => {
  const s = /** @type {HTMLElement} */ (e.target).dataset?.similar;
  if (s) { const [ns, id] = s.split('|'); similar(ns, id); }
});
// Live queries keep both lists current: each runs again only when a row it reads changed (a
// change from the node, a write here, a refused write taken back), at most once a frame.
const showError = (/** @type {Error} */ e) => { $('error').textContent = e.message; };
db.live('sql', ['SELECT ns, id, kind, name, updated_at FROM entities ORDER BY updated_at DESC, rowid DESC LIMIT 20'],
  () => renderRecent().catch(showError), showError);
/** @type {{ close(): void } | null} */
let liveSearch = null;
const watchSearch = () => {
  liveSearch?.close();
  const text = $('q').value.trim();
  liveSearch = text ? db.live('search', [{ text, limit: 20 }], () => renderSearch().catch(showError), showError) : null;
  if (!text) renderSearch().catch(showError);
};
$('q').addEventListener('input', watchSearch);
db.on('status', showStatus);
// The first copy comes as a database image: a progress bar while it downloads.
const mib = (/** @type {number} */ n) => (n / 1048576).toFixed(1);
db.on('bootstrap', (b) => {
  const bar = /** @type {HTMLProgressElement} */ (/** @type {unknown} */ ($('boot-bar')));
  $('boot').hidden = false;
  const [bytes, total, rows] = [b.bytes ?? 0, b.totalBytes ?? 0, (b.rows ?? 0).toLocaleString()];
  if (b.phase === 'download') {
    bar.hidden = false;
    bar.max = total || 1;
    bar.value = bytes;
    $('boot-text').textContent = `first copy: ${mib(bytes)} of ${mib(total)} MiB (${rows} rows, seq ${b.seq})`;
  } else {
    bar.hidden = true;
    $('boot-text').textContent = b.phase === 'done'
      ? `started from an image of ${rows} rows in ${b.ms} ms${b.pending ? `, ${b.pending} pending writes kept on top` : ''}`
      : `no image (${b.message}): syncing row by row`;
  }
});
db.on('written', () => renderRecent());
db.on('rejected', (r) => {
  $('error').textContent = `The node refused a write made here (${r.code}: ${r.message}); it was taken back.`;
  $('error').className = 'refused';
  renderRecent();
});
db.on('error', (e) => {
  // Refused by the node: the sync client has stopped; the page answers from its stored copy
  // until another token is entered.
  const denied = e.code === 'unauthorized' || e.code === 'forbidden';
  $('error').textContent = denied ? `${e.code}: ${e.message}. ${token ? 'Enter another token' : 'Enter a token'} above.` : e.message;
  $('error').className = denied ? 'denied' : 'muted';
  if (denied) $('token').focus();
});
showStatus(await db.status());
const q = new URLSearchParams(location.search).get('q');
if (q) {
  $('q').value = q;
  await renderSearch();
  performance.mark('first-search');
  // The frame after next has painted the answer (measured by wasm/bench/page-open.mjs).
  requestAnimationFrame(() => requestAnimationFrame(() => performance.mark('first-search-painted')));
  watchSearch();
}
await renderRecent();
