// exo dashboard: a dependency-free single page app over the gateway's /v1 API.
// Every server-provided string is put into the page through textContent / text
// nodes / attributes, never through innerHTML.
'use strict';

(() => {
  // ---------------------------------------------------------------- settings
  const TOKEN_KEY = 'exo.token';
  const PAGE_SIZE = 50;
  const FLEET_POLL_MS = 2000;
  const QUEUE_POLL_MS = 5000;
  const TASKS_POLL_MS = 2000;
  const TASK_POLL_MS = 3000;
  const DEAD_POLL_MS = 10000;
  const TASK_STATUSES = ['pending', 'running', 'retrying', 'completed', 'failed', 'cancelled'];
  const CANCELLABLE = new Set(['pending', 'running', 'retrying']);
  const FINISHED = new Set(['completed', 'failed', 'cancelled']);

  // ------------------------------------------------------------- dom helpers
  const $ = (sel, root = document) => root.querySelector(sel);

  /** Creates an element. attrs: class, text, on<event>, dataset, or plain attributes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = String(v);
        else if (k === 'dataset') Object.assign(el.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    appendAll(el, children);
    return el;
  }

  function appendAll(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
    appendAll(el, children);
    return el;
  }

  // ------------------------------------------------------------- formatting
  /** Server numbers may arrive as numbers or numeric strings (redis hash values). */
  function num(v) {
    if (v == null || v === '') return null;
    const n = typeof v === 'number' ? v : Number(v);
    return Number.isFinite(n) ? n : null;
  }
  const str = (v) => (v == null ? '' : String(v));
  const nowSec = () => Date.now() / 1000;
  const pad2 = (n) => String(n).padStart(2, '0');

  function fmtTime(ts) {
    const t = num(ts);
    if (t == null || t <= 0) return '—';
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  function fmtClock(ts) {
    const d = new Date(ts * 1000);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }
  function fmtAgo(ts) {
    const t = num(ts);
    if (t == null || t <= 0) return '—';
    return `${fmtSpan(Math.max(0, nowSec() - t))} ago`;
  }
  function fmtSpan(sec) {
    if (sec < 60) return `${Math.floor(sec)} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min`;
    if (sec < 86400) return `${Math.floor(sec / 3600)} h`;
    return `${Math.floor(sec / 86400)} d`;
  }
  function fmtDur(sec) {
    const s = num(sec);
    if (s == null || s < 0) return '—';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  function fmtMs(ms) {
    const m = num(ms);
    if (m == null) return '—';
    if (m < 1000) return `${m.toFixed(m < 10 ? 2 : 0)} ms`;
    return fmtDur(m / 1000);
  }
  const intFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  function fmtInt(v) {
    const n = num(v);
    return n == null ? '—' : intFormat.format(Math.round(n));
  }
  function fmtRate(v) {
    const n = num(v);
    if (n == null) return '—';
    if (n === 0) return '0';
    if (n < 10) return n.toFixed(2);
    return n.toFixed(1);
  }
  function span(a, b) {
    const x = num(a), y = num(b);
    return x != null && y != null && x > 0 && y > 0 ? y - x : null;
  }
  /** Pretty JSON for strings that hold JSON, objects, or anything else. */
  function pretty(v) {
    if (v == null) return '';
    if (typeof v === 'string') {
      const t = v.trim();
      if (t.startsWith('{') || t.startsWith('[')) {
        try { return JSON.stringify(JSON.parse(t), null, 2); } catch (_) { return v; }
      }
      return v;
    }
    try { return JSON.stringify(v, null, 2); } catch (_) { return String(v); }
  }
  function badge(status, extraClass) {
    const s = str(status) || 'unknown';
    return h('span', {
      class: `badge badge-${s.replace(/[^a-z0-9_-]/gi, '')}${extraClass ? ' ' + extraClass : ''}`,
      dataset: { status: s }, text: s,
    });
  }
  function taskLink(id, label) {
    return h('a', { href: `#/tasks/${encodeURIComponent(id)}`, class: 'mono', text: label || id });
  }
  function shortId(id) {
    const s = str(id);
    return s.length > 14 ? `${s.slice(0, 12)}…` : s;
  }

  // ---------------------------------------------------------------- banner
  const errors = new Map(); // key -> {message, status}
  function setError(key, message, status) {
    errors.set(key, { message, status });
    renderBanner();
  }
  function clearError(key) {
    if (errors.delete(key)) renderBanner();
  }
  function clearAllErrors() {
    errors.clear();
    renderBanner();
  }
  function renderBanner() {
    const banner = $('#error-banner');
    const list = $('#error-list');
    list.replaceChildren(...[...errors.entries()].map(([key, e]) =>
      h('li', { dataset: { errorKey: key, status: str(e.status) }, text: e.message })));
    banner.hidden = errors.size === 0;
    banner.classList.toggle('auth', [...errors.values()].some((e) => e.status === 401 || e.status === 403));
  }

  // ------------------------------------------------------------------- api
  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }
  const getToken = () => (localStorage.getItem(TOKEN_KEY) || '').trim();

  function problemText(status, p) {
    const title = p.title || (status ? `HTTP ${status}` : 'Request failed');
    const detail = p.detail && p.detail !== p.title ? `: ${p.detail}` : '';
    return `${title}${detail}`;
  }

  /**
   * fetch() wrapper: bearer token, JSON in/out, problem+json errors.
   * 401/403 always go to the banner; other errors unless opts.quiet.
   */
  async function api(path, opts = {}) {
    const method = opts.method || 'GET';
    const key = opts.key || `${method} ${path.split('?')[0]}`;
    const headers = { Accept: 'application/json, application/problem+json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store' });
    } catch (e) {
      if (!opts.quiet) setError('network', `Cannot reach the gateway (${e.message || e}).`, 0);
      throw new ApiError(0, { title: 'Network error', detail: String(e.message || e) });
    }
    clearError('network');
    const text = await res.text();
    let data = null;
    if (text) { try { data = JSON.parse(text); } catch (_) { data = null; } }
    if (!res.ok) {
      const problem = data && typeof data === 'object' ? data : { title: res.statusText, detail: text.slice(0, 200) };
      const msg = problemText(res.status, problem);
      if (res.status === 401) {
        setError('auth', `Not authenticated (401) — ${msg}. Enter a valid token in the Token box.`, 401);
      } else if (res.status === 403) {
        setError(`forbidden ${key}`, `Forbidden (403) — ${msg}. Your token lacks the scope for ${method} ${path.split('?')[0]}.`, 403);
      } else if (!opts.quiet) {
        setError(key, `${method} ${path.split('?')[0]} failed (${res.status}) — ${msg}`, res.status);
      }
      throw new ApiError(res.status, problem);
    }
    clearError(key);
    clearError('auth');
    return data;
  }

  function eventSourceUrl(path) {
    const token = getToken();
    if (!token) return path;
    return `${path}${path.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}`;
  }

  // -------------------------------------------------------------- /v1/me
  let me = { scopes: [], tenant: null, auth: null, loaded: false };
  const meListeners = new Set();
  const can = (scope) => me.scopes.includes(scope) || me.scopes.includes('admin');

  async function loadMe() {
    try {
      const m = await api('/v1/me', { quiet: true });
      me = { scopes: Array.isArray(m && m.scopes) ? m.scopes.map(String) : [], tenant: m ? m.tenant : null, auth: m ? m.auth : null, loaded: true };
    } catch (_) {
      me = { scopes: [], tenant: null, auth: null, loaded: true, failed: true };
    }
    const info = $('#me-info');
    if (me.failed) info.textContent = 'scopes: unknown';
    else {
      const parts = [me.auth ? 'auth on' : 'auth off', `scopes: ${me.scopes.join(', ') || 'none'}`];
      if (me.tenant) parts.push(`tenant: ${me.tenant}`);
      info.textContent = parts.join(' · ');
    }
    info.dataset.scopes = me.scopes.join(' ');
    meListeners.forEach((f) => f());
  }

  // ----------------------------------------------------------------- scope
  /** Lifetime of one mounted view: timers, event sources and listeners die with it. */
  class Scope {
    constructor() { this.alive = true; this.disposers = []; }
    add(fn) { this.disposers.push(fn); }
    dispose() {
      this.alive = false;
      for (const f of this.disposers.splice(0)) { try { f(); } catch (_) { /* ignore */ } }
    }
    onMe(fn) { meListeners.add(fn); this.add(() => meListeners.delete(fn)); }
    /** Runs fn now and every ms after it settles; returns {now()} to refresh at once. */
    poll(fn, ms) {
      let timer = null, running = false, again = false;
      const run = async () => {
        if (!this.alive) return;
        clearTimeout(timer);
        if (running) { again = true; return; }
        running = true;
        try { await fn(); } catch (_) { /* reported via the banner */ }
        running = false;
        if (!this.alive) return;
        if (again) { again = false; run(); return; }
        timer = setTimeout(run, ms);
      };
      this.add(() => clearTimeout(timer));
      run();
      return { now: run };
    }
  }

  // ------------------------------------------------------------ keyed tables
  /**
   * Reconciles tbody rows by key; a cell is rebuilt only when its signature
   * changes, so focus, <details> state and scroll position survive polling.
   * columns: [{sig(item) -> string, render(item) -> Node|string, class?}]
   */
  function reconcileRows(tbody, items, keyOf, columns, rowAttrs) {
    const existing = new Map();
    for (const tr of [...tbody.rows]) {
      if (tr.dataset.key != null) existing.set(tr.dataset.key, tr);
      else tr.remove();
    }
    let prev = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else {
        tr = h('tr');
        tr.dataset.key = key;
        for (const col of columns) tr.append(h('td', { class: col.class }));
      }
      if (rowAttrs) rowAttrs(tr, item);
      columns.forEach((col, i) => {
        const td = tr.cells[i];
        const sig = col.sig(item);
        if (td.dataset.sig !== sig) {
          td.dataset.sig = sig;
          const content = col.render(item);
          td.replaceChildren();
          appendAll(td, [content]);
        }
      });
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  function emptyRow(tbody, colspan, text) {
    tbody.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan, text })));
  }

  // ------------------------------------------------------------------ router
  let currentScope = null;
  const routes = [
    [/^\/?$/, () => viewOverview()],
    [/^\/workers\/?$/, () => viewWorkers()],
    [/^\/queue\/?$/, () => viewQueue()],
    [/^\/tasks\/?$/, (m, q) => viewTasks(q)],
    [/^\/tasks\/([^/]+)\/?$/, (m) => viewTask(decodeURIComponent(m[1]))],
    [/^\/dead-letters\/?$/, () => viewDeadLetters()],
  ];

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const i = raw.indexOf('?');
    return { path: i >= 0 ? raw.slice(0, i) : raw, query: new URLSearchParams(i >= 0 ? raw.slice(i + 1) : '') };
  }

  function route() {
    if (currentScope) currentScope.dispose();
    currentScope = new Scope();
    for (const [k, e] of [...errors.entries()]) if (e.status === 403) errors.delete(k);
    renderBanner();
    const { path, query } = parseHash();
    const view = $('#view');
    view.replaceChildren();
    let navKey = '';
    for (const [re, fn] of routes) {
      const m = path.match(re);
      if (m) {
        navKey = fn(m, query) || '';
        break;
      }
    }
    if (!view.firstChild) {
      view.append(h('section', { class: 'panel' }, h('h1', { text: 'Not found' }),
        h('p', null, 'No page at ', h('code', { text: path }), '. ', h('a', { href: '#/', text: 'Back to overview' }))));
    }
    for (const a of document.querySelectorAll('.nav a')) {
      if (a.dataset.nav === navKey) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  const mount = (...nodes) => appendAll($('#view'), nodes);

  // --------------------------------------------------------------- overview
  function viewOverview() {
    document.title = 'Overview · exo';
    const s = currentScope;
    const alerts = h('section', { id: 'alerts', class: 'alerts', hidden: true, 'aria-label': 'Firing alerts' });
    const queue = h('section', { class: 'panel', 'aria-labelledby': 'queue-h' });
    const fleet = h('section', { class: 'panel', 'aria-labelledby': 'fleet-h' });
    mount(alerts, queue, fleet);
    mountAlerts(alerts, s);
    mountQueue(queue, s);
    mountFleet(fleet, s);
    return 'overview';
  }
  function viewWorkers() {
    document.title = 'Workers · exo';
    const fleet = h('section', { class: 'panel', 'aria-labelledby': 'fleet-h' });
    mount(fleet);
    mountFleet(fleet, currentScope);
    return 'overview';
  }
  function viewQueue() {
    document.title = 'Queue · exo';
    const queue = h('section', { class: 'panel', 'aria-labelledby': 'queue-h' });
    mount(queue);
    mountQueue(queue, currentScope);
    return 'overview';
  }

  function mountAlerts(root, s) {
    s.poll(async () => {
      let data;
      try { data = await api('/v1/alerts', { quiet: true }); } catch (_) { root.hidden = true; return; }
      const firing = Array.isArray(data && data.firing) ? data.firing : [];
      root.hidden = firing.length === 0;
      root.replaceChildren(...firing.map((a) => {
        // The API names the rule `rule`; its message starts with "SEVERITY rule: ".
        const name = str(a.rule || a.name);
        const severity = str(a.severity);
        let message = str(a.message);
        const prefix = `${severity} ${name}: `;
        if (name && message.toLowerCase().startsWith(prefix.toLowerCase())) message = message.slice(prefix.length);
        return h('div', {
          class: `alert alert-${severity.replace(/[^a-z]/gi, '') || 'warning'}`,
          dataset: { alert: name },
        }, h('strong', { text: `${name || 'alert'} (${severity || 'alert'})` }), ' ',
        h('span', { text: message || `${str(a.metric)} = ${str(a.value)} (threshold ${str(a.threshold)})` }));
      }));
    }, QUEUE_POLL_MS);
  }

  // ------------------------------------------------------------------ fleet
  function mountFleet(root, s) {
    const summary = h('span', { id: 'fleet-summary', class: 'muted' });
    const updated = h('span', { class: 'updated muted' });
    const tbody = h('tbody');
    const table = h('table', { id: 'workers-table', class: 'data' },
      h('caption', { class: 'sr-only', text: 'Workers' }),
      h('thead', null, h('tr', null,
        ['Worker', 'State', 'Status', 'Slots busy', 'Current task', 'Last heartbeat', 'Hostname', 'Processed / failed']
          .map((t) => h('th', { scope: 'col', text: t })))),
      tbody);
    emptyRow(tbody, 8, 'Loading…');
    root.append(h('div', { class: 'panel-head' }, h('h2', { id: 'fleet-h', text: 'Fleet' }), summary, h('span', { class: 'spacer' }), updated),
      h('div', { class: 'table-wrap' }, table));

    const columns = [
      { sig: (w) => str(w.worker_id), render: (w) => h('span', { class: 'mono', title: str(w.worker_id), text: str(w.worker_id) }) },
      { sig: (w) => String(!!w.alive), render: (w) => badge(w.alive ? 'alive' : 'dead') },
      { sig: (w) => str(w.health && w.health.status), render: (w) => (w.health && w.health.status ? badge(w.health.status) : '—') },
      {
        sig: (w) => slots(w).join('/'), class: 'num',
        render: (w) => {
          const [busy, conc] = slots(w);
          if (conc == null) return busy == null ? '—' : String(busy);
          const pct = conc > 0 ? Math.min(100, Math.round((busy / conc) * 100)) : 0;
          // Through the CSSOM: the page's CSP (style-src 'self') blocks style attributes.
          const fill = h('span', { class: 'meter-fill', dataset: { pct: String(pct) } });
          fill.style.width = `${pct}%`;
          return h('span', { class: 'slots' },
            h('span', { class: 'meter', role: 'img', 'aria-label': `${busy} of ${conc} slots busy` }, fill),
            h('span', { class: 'slots-text', text: `${busy} / ${conc}` }));
        },
      },
      {
        sig: (w) => str(w.health && w.health.current_task_id),
        render: (w) => {
          const id = str(w.health && w.health.current_task_id);
          return id ? taskLink(id, shortId(id)) : h('span', { class: 'muted', text: 'idle' });
        },
      },
      {
        sig: (w) => fmtAgo(lastBeat(w)),
        render: (w) => h('span', { title: fmtTime(lastBeat(w)), text: fmtAgo(lastBeat(w)) }),
      },
      { sig: (w) => str(w.health && w.health.hostname), render: (w) => str(w.health && w.health.hostname) || '—' },
      {
        sig: (w) => `${str(w.health && w.health.tasks_processed)}/${str(w.health && w.health.tasks_failed)}`, class: 'num',
        render: (w) => (w.health ? `${fmtInt(w.health.tasks_processed)} / ${fmtInt(w.health.tasks_failed)}` : '—'),
      },
    ];

    s.poll(async () => {
      const data = await api('/v1/workers', { key: 'workers' });
      if (!s.alive) return;
      const workers = (Array.isArray(data && data.workers) ? data.workers : []).slice()
        .sort((a, b) => (Number(!!b.alive) - Number(!!a.alive)) || str(a.worker_id).localeCompare(str(b.worker_id)));
      const alive = workers.filter((w) => w.alive);
      let busy = 0, total = 0;
      for (const w of alive) { const [b, c] = slots(w); busy += b || 0; total += c || 0; }
      summary.textContent = `${alive.length} alive · ${workers.length - alive.length} dead · ${busy} / ${total} slots busy`;
      updated.textContent = `updated ${fmtClockSec(nowSec())}`;
      if (!workers.length) { emptyRow(tbody, 8, 'No workers have registered.'); return; }
      reconcileRows(tbody, workers, (w) => w.worker_id, columns, (tr, w) => {
        tr.dataset.workerId = str(w.worker_id);
        tr.dataset.alive = String(!!w.alive);
        tr.classList.toggle('dead', !w.alive);
      });
    }, FLEET_POLL_MS);
  }
  function slots(w) {
    const hl = w.health || {};
    const conc = num(hl.concurrency);
    let busy = num(hl.active_tasks);
    if (busy == null && w.health) busy = str(hl.current_task_id) ? 1 : 0;
    if (!w.alive && busy != null) busy = 0;
    return [busy, conc];
  }
  function lastBeat(w) {
    return num(w.health && w.health.last_heartbeat) || num(w.last_seen);
  }
  function fmtClockSec(ts) {
    const d = new Date(ts * 1000);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  // ------------------------------------------------------------------ queue
  function mountQueue(root, s) {
    const stat = (id, label, hint) => h('div', { class: 'stat' },
      h('div', { class: 'stat-label', text: label, title: hint }),
      h('div', { class: 'stat-value', id, text: '—' }));
    const consumers = h('p', { id: 'queue-consumers', class: 'muted small' });
    const chart = h('div', { id: 'throughput-chart', class: 'chart' }, h('p', { class: 'muted', text: 'Loading…' }));
    const chartNote = h('span', { id: 'throughput-summary', class: 'muted small' });
    const updated = h('span', { class: 'updated muted' });
    root.append(
      h('div', { class: 'panel-head' }, h('h2', { id: 'queue-h', text: 'Queue' }), h('span', { class: 'spacer' }), updated),
      h('div', { class: 'stats' },
        stat('queue-depth', 'Depth', 'Tasks waiting to be picked up'),
        stat('queue-lag', 'Lag', 'Entries not yet delivered to any worker'),
        stat('queue-pending', 'Pending', 'Delivered but not acknowledged (in progress)'),
        stat('queue-delayed', 'Delayed', 'Scheduled for a later retry'),
        stat('queue-dead-letter', 'Dead letter', 'Tasks that exhausted their retries'),
        stat('queue-oldest-wait', 'Oldest wait', 'Age of the oldest waiting task'),
        stat('queue-stream-length', 'Stream length', 'Entries in the queue stream')),
      consumers,
      h('div', { class: 'panel-head sub' }, h('h3', { text: 'Throughput, last 15 minutes' }), chartNote),
      chart);

    s.poll(async () => {
      const q = await api('/v1/queue', { key: 'queue' });
      if (!s.alive || !q) return;
      const set = (id, v) => { const el = root.querySelector(`#${id}`); el.textContent = v; };
      set('queue-depth', fmtInt(q.depth));
      set('queue-lag', fmtInt(q.lag));
      set('queue-pending', fmtInt(q.pending));
      set('queue-delayed', fmtInt(q.delayed));
      set('queue-dead-letter', fmtInt(q.dead_letter));
      set('queue-stream-length', fmtInt(q.stream_length));
      let wait = num(q.oldest_wait_seconds);
      if (wait == null && num(q.oldest_waiting_created_at)) wait = Math.max(0, nowSec() - num(q.oldest_waiting_created_at));
      set('queue-oldest-wait', wait == null ? '—' : fmtDur(wait).replace(' min ', 'm ').replace(/ s$/, 's').replace(' h ', 'h '));
      root.querySelector('#queue-dead-letter').classList.toggle('bad', (num(q.dead_letter) || 0) > 0);
      const pbc = Array.isArray(q.pending_by_consumer) ? q.pending_by_consumer : [];
      consumers.textContent = pbc.length
        ? `Pending by worker: ${pbc.map((p) => `${str(p[0])} ${fmtInt(p[1])}`).join(' · ')}`
        : '';
      updated.textContent = `updated ${fmtClockSec(nowSec())}`;
    }, QUEUE_POLL_MS);

    let lastHistory = null;
    const draw = () => { if (lastHistory) drawThroughput(chart, chartNote, lastHistory); };
    s.poll(async () => {
      const hist = await api('/v1/queue/history', { key: 'queue-history' });
      if (!s.alive) return;
      lastHistory = hist || { samples: [] };
      draw();
    }, QUEUE_POLL_MS * 2);
    let raf = 0;
    const onResize = () => { cancelAnimationFrame(raf); raf = requestAnimationFrame(draw); };
    window.addEventListener('resize', onResize);
    s.add(() => window.removeEventListener('resize', onResize));
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** Area + line chart of finished_per_second over the last 15 minutes, in inline SVG. */
  function drawThroughput(container, note, hist) {
    const samples = (Array.isArray(hist.samples) ? hist.samples : [])
      .map((x) => ({ at: num(x.at), v: num(x.finished_per_second) || 0, depth: num(x.depth), pending: num(x.pending), dl: num(x.dead_letter) }))
      .filter((x) => x.at != null)
      .sort((a, b) => a.at - b.at);
    const W = Math.max(320, Math.floor(container.clientWidth || 800));
    const H = 200;
    const m = { l: 52, r: 16, t: 12, b: 30 };
    const iw = W - m.l - m.r, ih = H - m.t - m.b;
    const x1 = Math.max(nowSec(), samples.length ? samples[samples.length - 1].at : 0);
    const x0 = x1 - 900;
    const vis = samples.filter((p) => p.at >= x0 - 1);
    const peak = vis.reduce((a, p) => Math.max(a, p.v), 0);
    const yMax = niceMax(peak);
    const X = (t) => m.l + ((t - x0) / 900) * iw;
    const Y = (v) => m.t + ih - (v / yMax) * ih;
    const cur = vis.length ? vis[vis.length - 1].v : 0;
    const avg = vis.length ? vis.reduce((a, p) => a + p.v, 0) / vis.length : 0;
    const label = vis.length
      ? `Finished tasks per second over the last 15 minutes: now ${fmtRate(cur)}, average ${fmtRate(avg)}, peak ${fmtRate(peak)}.`
      : 'No throughput samples in the last 15 minutes.';
    note.textContent = vis.length ? `now ${fmtRate(cur)}/s · avg ${fmtRate(avg)}/s · peak ${fmtRate(peak)}/s` : '';

    const root = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, class: 'chart-svg' },
      svg('title', null, label));
    // grid + y labels
    const ticks = 4;
    for (let i = 0; i <= ticks; i++) {
      const v = (yMax / ticks) * i;
      const y = Y(v);
      root.append(svg('line', { x1: m.l, x2: m.l + iw, y1: y, y2: y, class: i === 0 ? 'axis' : 'grid' }));
      root.append(svg('text', { x: m.l - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, fmtRate(v)));
    }
    root.append(svg('text', { x: 12, y: m.t + ih / 2, class: 'axis-title', transform: `rotate(-90 12 ${m.t + ih / 2})`, 'text-anchor': 'middle' }, 'tasks / s'));
    // x labels every 3 minutes
    for (let i = 0; i <= 5; i++) {
      const t = x0 + i * 180;
      const x = X(t);
      root.append(svg('line', { x1: x, x2: x, y1: m.t + ih, y2: m.t + ih + 4, class: 'axis' }));
      const txt = i === 5 ? 'now' : `−${15 - i * 3} min`;
      root.append(svg('text', { x, y: H - 8, 'text-anchor': i === 0 ? 'start' : i === 5 ? 'end' : 'middle', class: 'tick' }, txt));
    }
    if (vis.length) {
      const pts = vis.map((p) => `${X(Math.max(p.at, x0)).toFixed(1)},${Y(p.v).toFixed(1)}`);
      const first = X(Math.max(vis[0].at, x0)).toFixed(1), last = X(vis[vis.length - 1].at).toFixed(1);
      const base = Y(0).toFixed(1);
      root.append(svg('polygon', { points: `${first},${base} ${pts.join(' ')} ${last},${base}`, class: 'area' }));
      root.append(svg('polyline', { points: pts.join(' '), class: 'line' }));
      // hover readout
      const guide = svg('line', { y1: m.t, y2: m.t + ih, class: 'guide', visibility: 'hidden' });
      const dot = svg('circle', { r: 3.5, class: 'dot', visibility: 'hidden' });
      const readout = svg('text', { y: m.t + 12, class: 'readout', visibility: 'hidden' });
      const hit = svg('rect', { x: m.l, y: m.t, width: iw, height: ih, class: 'hit' });
      root.append(guide, dot, readout, hit);
      hit.addEventListener('mousemove', (ev) => {
        const rect = root.getBoundingClientRect();
        const t = x0 + ((ev.clientX - rect.left - m.l) / iw) * 900;
        let best = vis[0];
        for (const p of vis) if (Math.abs(p.at - t) < Math.abs(best.at - t)) best = p;
        const x = X(best.at);
        guide.setAttribute('x1', x); guide.setAttribute('x2', x);
        dot.setAttribute('cx', x); dot.setAttribute('cy', Y(best.v));
        readout.textContent = `${fmtClockSec(best.at)} · ${fmtRate(best.v)}/s` +
          (best.depth != null ? ` · depth ${best.depth}` : '') + (best.pending != null ? ` · pending ${best.pending}` : '');
        const right = x > m.l + iw * 0.6;
        readout.setAttribute('x', right ? x - 8 : x + 8);
        readout.setAttribute('text-anchor', right ? 'end' : 'start');
        for (const el of [guide, dot, readout]) el.setAttribute('visibility', 'visible');
      });
      hit.addEventListener('mouseleave', () => { for (const el of [guide, dot, readout]) el.setAttribute('visibility', 'hidden'); });
    } else {
      root.append(svg('text', { x: m.l + iw / 2, y: m.t + ih / 2, 'text-anchor': 'middle', class: 'tick' }, 'no samples yet'));
    }
    container.replaceChildren(root);
    container.dataset.samples = String(vis.length);
  }

  // ------------------------------------------------------------------ tasks
  const tasksState = { status: '', agent: '', cursor: null, stack: [], scrollY: 0 };
  let tasksSeq = 0;

  function looksLikeTaskId(v) {
    // hex ids / UUIDs / other opaque ids: long, no spaces, has a digit.
    return /^[A-Za-z0-9_-]{16,}$/.test(v) && /\d/.test(v);
  }

  function viewTasks(query) {
    document.title = 'Tasks · exo';
    const s = currentScope;
    if (query.has('status') || query.has('agent')) {
      const st = query.get('status') || '', ag = query.get('agent') || '';
      if (st !== tasksState.status || ag !== tasksState.agent) {
        Object.assign(tasksState, { status: st, agent: ag, cursor: null, stack: [] });
      }
    }
    const statusSel = h('select', { id: 'status-filter', name: 'status' },
      h('option', { value: '', text: 'All statuses' }),
      TASK_STATUSES.map((st) => h('option', { value: st, text: st })));
    statusSel.value = tasksState.status;
    const search = h('input', {
      id: 'task-search', type: 'search', name: 'q', placeholder: 'Task id or agent name',
      spellcheck: 'false', autocomplete: 'off', value: tasksState.agent,
    });
    const notice = h('p', { id: 'tasks-notice', class: 'notice', 'aria-live': 'polite', hidden: true });
    const agentChip = h('span', { id: 'agent-filter', class: 'chip', hidden: true });
    const tbody = h('tbody');
    const table = h('table', { id: 'tasks-table', class: 'data clickable' },
      h('caption', { class: 'sr-only', text: 'Tasks, newest first' }),
      h('thead', null, h('tr', null,
        ['Task', 'Status', 'Agent', 'Worker', 'Attempt', 'Created', 'Started', 'Duration']
          .map((t) => h('th', { scope: 'col', text: t })))),
      tbody);
    const newer = h('button', { id: 'tasks-newer', type: 'button', class: 'secondary', text: '← Newer' });
    const next = h('button', { id: 'tasks-next', type: 'button', class: 'secondary', text: 'Next →' });
    const pageInfo = h('span', { id: 'tasks-page', class: 'muted' });
    const updated = h('span', { class: 'updated muted' });
    const form = h('form', { id: 'tasks-filters', class: 'toolbar', role: 'search' },
      h('label', { for: 'status-filter', text: 'Status' }), statusSel,
      h('label', { for: 'task-search', text: 'Search' }), search,
      h('button', { type: 'submit', text: 'Search' }),
      agentChip);
    mount(h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h1', { text: 'Tasks' }), h('span', { class: 'spacer' }), updated),
      form, notice,
      h('div', { class: 'table-wrap' }, table),
      h('div', { class: 'pager' }, newer, pageInfo, next)));
    emptyRow(tbody, 8, 'Loading…');

    const syncHash = () => {
      const q = new URLSearchParams();
      if (tasksState.status) q.set('status', tasksState.status);
      if (tasksState.agent) q.set('agent', tasksState.agent);
      const qs = q.toString();
      history.replaceState(null, '', `#/tasks${qs ? '?' + qs : ''}`);
    };
    const showNotice = (text) => { notice.textContent = text; notice.hidden = !text; };
    const renderChip = () => {
      agentChip.hidden = !tasksState.agent;
      agentChip.replaceChildren();
      if (tasksState.agent) {
        agentChip.append(h('span', { text: `agent: ${tasksState.agent}` }),
          h('button', {
            type: 'button', class: 'chip-x', 'aria-label': 'Clear agent filter', text: '×',
            onclick: () => { search.value = ''; setFilter(tasksState.status, ''); },
          }));
      }
    };
    const setFilter = (status, agent) => {
      Object.assign(tasksState, { status, agent, cursor: null, stack: [] });
      syncHash();
      renderChip();
      emptyRow(tbody, 8, 'Loading…');
      poller.now();
    };

    const durationOf = (t) => {
      const d = span(t.started_at, t.completed_at);
      if (d != null) return fmtDur(d);
      if (num(t.started_at) && !FINISHED.has(t.status)) return `${fmtDur(nowSec() - num(t.started_at))} …`;
      return '—';
    };
    const columns = [
      { sig: (t) => str(t.task_id), class: 'mono', render: (t) => taskLink(t.task_id, shortId(t.task_id)) },
      { sig: (t) => str(t.status), render: (t) => badge(t.status) },
      { sig: (t) => str(t.agent_name), render: (t) => str(t.agent_name) || '—' },
      { sig: (t) => str(t.worker_id), render: (t) => (t.worker_id ? h('span', { class: 'mono small', title: str(t.worker_id), text: str(t.worker_id) }) : '—') },
      {
        sig: (t) => `${str(t.attempt)}/${str(t.retries)}/${str(t.max_retries)}`, class: 'num',
        render: (t) => attemptText(t),
      },
      { sig: (t) => fmtAgo(t.created_at), render: (t) => h('span', { title: fmtTime(t.created_at), text: fmtAgo(t.created_at) }) },
      { sig: (t) => fmtAgo(t.started_at), render: (t) => h('span', { title: fmtTime(t.started_at), text: fmtAgo(t.started_at) }) },
      { sig: (t) => durationOf(t), class: 'num', render: (t) => durationOf(t) },
    ];

    let restoreScroll = tasksState.scrollY;
    const poller = s.poll(async () => {
      const seq = ++tasksSeq;
      const q = new URLSearchParams();
      if (tasksState.status) q.set('status', tasksState.status);
      if (tasksState.agent) q.set('agent', tasksState.agent);
      if (tasksState.cursor != null) q.set('cursor', String(tasksState.cursor));
      q.set('limit', String(PAGE_SIZE));
      const data = await api(`/v1/tasks?${q}`, { key: 'tasks' });
      if (!s.alive || seq !== tasksSeq) return;
      const tasks = Array.isArray(data && data.tasks) ? data.tasks : [];
      const nextCursor = data ? data.next_cursor : null;
      next.disabled = nextCursor == null;
      next.dataset.cursor = nextCursor == null ? '' : String(nextCursor);
      newer.disabled = tasksState.stack.length === 0;
      pageInfo.textContent = `Page ${tasksState.stack.length + 1} · ${tasks.length} task${tasks.length === 1 ? '' : 's'}`;
      tasksState.nextCursor = nextCursor;
      updated.textContent = `updated ${fmtClockSec(nowSec())}`;
      if (!tasks.length) {
        emptyRow(tbody, 8, tasksState.stack.length ? 'No tasks on this page.' : 'No tasks match.');
      } else {
        reconcileRows(tbody, tasks, (t) => t.task_id, columns, (tr, t) => {
          tr.dataset.taskId = str(t.task_id);
          tr.dataset.status = str(t.status);
        });
      }
      if (restoreScroll) { window.scrollTo(0, restoreScroll); restoreScroll = 0; }
    }, TASKS_POLL_MS);

    const onScroll = () => { tasksState.scrollY = window.scrollY; };
    window.addEventListener('scroll', onScroll, { passive: true });
    s.add(() => window.removeEventListener('scroll', onScroll));

    statusSel.addEventListener('change', () => setFilter(statusSel.value, tasksState.agent));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = search.value.trim();
      showNotice('');
      if (v && looksLikeTaskId(v)) {
        try {
          const t = await api(`/v1/tasks/${encodeURIComponent(v)}`, { quiet: true });
          if (!s.alive) return;
          location.hash = `#/tasks/${encodeURIComponent(str(t && t.task_id) || v)}`;
          return;
        } catch (e) {
          if (!s.alive) return;
          if (e.status !== 404) { showNotice(`Looking up task ${v} failed: ${e.message}`); return; }
          showNotice(`No task with id “${v}”; filtering by agent name instead.`);
        }
      }
      setFilter(tasksState.status, v);
    });
    next.addEventListener('click', () => {
      if (tasksState.nextCursor == null) return;
      tasksState.stack.push(tasksState.cursor);
      tasksState.cursor = tasksState.nextCursor;
      emptyRow(tbody, 8, 'Loading…');
      poller.now();
      table.scrollIntoView({ block: 'nearest' });
    });
    newer.addEventListener('click', () => {
      if (!tasksState.stack.length) return;
      tasksState.cursor = tasksState.stack.pop();
      emptyRow(tbody, 8, 'Loading…');
      poller.now();
    });
    tbody.addEventListener('click', (ev) => {
      if (ev.target.closest('a, button')) return;
      const tr = ev.target.closest('tr[data-task-id]');
      if (tr) location.hash = `#/tasks/${encodeURIComponent(tr.dataset.taskId)}`;
    });
    renderChip();
    return 'tasks';
  }

  function attemptText(t) {
    const attempt = num(t.attempt), retries = num(t.retries), max = num(t.max_retries);
    if (attempt != null) return max != null ? `${attempt} / ${max + 1}` : String(attempt);
    if (retries != null) return max != null ? `${retries + 1} / ${max + 1}` : String(retries + 1);
    return '—';
  }

  // -------------------------------------------------------------- task view
  function viewTask(id) {
    document.title = `Task ${shortId(id)} · exo`;
    const s = currentScope;
    let task = null;
    const statusEl = h('span', { id: 'task-status', class: 'badge', text: 'loading' });
    const cancelBtn = h('button', { id: 'cancel-button', type: 'button', class: 'danger', disabled: true, text: 'Cancel task' });
    const cancelOutcome = h('span', { id: 'cancel-outcome', class: 'muted', 'aria-live': 'polite' });
    const meta = h('dl', { id: 'task-meta', class: 'meta' });
    const errorBox = h('div', { id: 'task-error-box', hidden: true },
      h('h3', { text: 'Error' }), h('pre', { id: 'task-error', class: 'error-text' }));
    const outputBox = h('div', { id: 'task-output-box', hidden: true },
      h('h3', { text: 'Result' }), h('pre', { id: 'task-output', class: 'output' }));
    const notFound = h('p', { id: 'task-not-found', class: 'notice bad', hidden: true });

    const count = h('span', { id: 'event-count', text: '0' });
    const tokens = h('span', { id: 'token-total', text: '0' });
    const streamState = h('span', { id: 'stream-state', class: 'badge', dataset: { state: 'connecting' }, text: 'connecting' });
    const follow = h('input', { id: 'follow-toggle', type: 'checkbox', checked: true });
    const restartBtn = h('button', { id: 'stream-restart', type: 'button', class: 'secondary small', hidden: true, text: 'Reconnect' });
    const timelineEl = h('div', { id: 'timeline', class: 'timeline', tabindex: '0', 'aria-label': 'Event timeline' });

    mount(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/tasks', text: 'Tasks' }), ' / ', h('span', { class: 'mono', text: id })),
      notFound,
      h('div', { class: 'task-layout' },
        h('section', { class: 'panel task-side', 'aria-labelledby': 'task-h' },
          h('div', { class: 'panel-head' }, h('h1', { id: 'task-h', text: 'Task' }), statusEl),
          h('div', { class: 'actions' }, cancelBtn, cancelOutcome),
          meta, errorBox, outputBox),
        h('section', { class: 'panel task-main', 'aria-labelledby': 'timeline-h' },
          h('div', { class: 'panel-head' },
            h('h2', { id: 'timeline-h', text: 'Timeline' }), streamState, restartBtn,
            h('span', { class: 'spacer' }),
            h('span', { class: 'muted small' }, count, ' events · tokens ', tokens),
            h('label', { class: 'small follow' }, follow, ' follow')),
          timelineEl)));

    let busyCancel = false;
    const row = (key, label, value) => [h('dt', { text: label }), h('dd', { dataset: { field: key } }, value)];
    const renderMeta = () => {
      const t = task || {};
      const st = str(t.status) || 'unknown';
      statusEl.textContent = st;
      statusEl.className = `badge badge-${st.replace(/[^a-z0-9_-]/gi, '')}`;
      statusEl.dataset.status = st;
      const wait = span(t.created_at, t.started_at);
      let run = span(t.started_at, t.completed_at);
      let runLabel = fmtDur(run);
      if (run == null && num(t.started_at) && !FINISHED.has(st)) runLabel = `${fmtDur(nowSec() - num(t.started_at))} (running)`;
      const retries = num(t.retries), max = num(t.max_retries);
      meta.replaceChildren(
        ...row('task_id', 'Id', h('span', { class: 'mono', text: str(t.task_id) || id })),
        ...row('status', 'Status', st),
        ...row('agent_name', 'Agent', str(t.agent_name) || '—'),
        ...(t.tenant ? row('tenant', 'Tenant', str(t.tenant)) : []),
        ...row('worker_id', 'Worker', t.worker_id ? h('span', { class: 'mono', text: str(t.worker_id) }) : '—'),
        ...row('attempt', 'Attempt', num(t.attempt) != null ? String(num(t.attempt)) : (retries != null ? String(retries + 1) : '—')),
        ...row('retries', 'Retries', `${retries != null ? retries : 0} / ${max != null ? max : '—'}`),
        ...row('created_at', 'Created', timeCell(t.created_at)),
        ...row('started_at', 'Started', timeCell(t.started_at)),
        ...row('completed_at', 'Completed', timeCell(t.completed_at)),
        ...row('queue_wait', 'Queue wait', fmtDur(wait)),
        ...row('run_time', 'Run time', runLabel),
      );
      const err = str(t.error);
      errorBox.hidden = !err;
      $('#task-error', errorBox).textContent = err;
      const out = resultText(t.result);
      outputBox.hidden = out == null;
      $('#task-output', outputBox).textContent = out == null ? '' : out;
      updateCancel();
    };
    const updateCancel = () => {
      const st = task ? str(task.status) : '';
      const allowed = can('cancel');
      cancelBtn.disabled = busyCancel || !CANCELLABLE.has(st) || !allowed;
      cancelBtn.title = !allowed ? 'Your token lacks the "cancel" scope' : (!CANCELLABLE.has(st) ? `Task is ${st || 'unknown'}` : 'Cancel this task');
    };
    s.onMe(updateCancel);

    const timeline = new Timeline(timelineEl, count, tokens, follow, () => metaSoon());
    s.add(() => timeline.dispose());
    let stopped = false;
    const loadTask = async () => {
      try {
        const t = await api(`/v1/tasks/${encodeURIComponent(id)}`, { key: 'task' });
        if (!s.alive) return;
        task = t || {};
        notFound.hidden = true;
        renderMeta();
      } catch (e) {
        if (!s.alive) return;
        if (e.status === 404) {
          clearError('task');
          notFound.textContent = `Task ${id} was not found.`;
          notFound.hidden = false;
          statusEl.textContent = 'not found';
          statusEl.dataset.status = 'not_found';
        }
        throw e;
      }
    };
    const metaPoll = s.poll(async () => {
      if (stopped) return;
      await loadTask();
      if (task && FINISHED.has(str(task.status)) && timeline.ended) stopped = true;
    }, TASK_POLL_MS);

    cancelBtn.addEventListener('click', async () => {
      busyCancel = true;
      updateCancel();
      cancelOutcome.textContent = 'Cancelling…';
      try {
        const r = await api(`/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: 'POST', key: 'cancel' });
        const outcome = str(r && r.outcome) || 'done';
        cancelOutcome.textContent = `Cancel: ${outcome}${r && r.status ? ` (status ${r.status})` : ''}`;
        cancelOutcome.dataset.outcome = outcome;
      } catch (e) {
        cancelOutcome.textContent = `Cancel failed: ${e.message}`;
        cancelOutcome.dataset.outcome = 'error';
      }
      busyCancel = false;
      stopped = false;
      metaPoll.now();
    });

    // live timeline
    let es = null;
    const setState = (state) => {
      streamState.textContent = state;
      streamState.dataset.state = state;
      streamState.className = `badge stream-${state}`;
      restartBtn.hidden = state !== 'disconnected';
    };
    const open = () => {
      if (es) es.close();
      const url = eventSourceUrl(`/v1/tasks/${encodeURIComponent(id)}/events?from=beginning`);
      es = new EventSource(url);
      setState('connecting');
      es.onopen = () => setState('live');
      // Keep this handler trivial: replays deliver thousands of messages in one task.
      es.onmessage = (msg) => timeline.push(msg.data);
      es.addEventListener('end', () => {
        es.close();
        es = null;
        timeline.end();
        setState('ended');
        stopped = false;
        metaPoll.now();
      });
      es.onerror = () => {
        if (!es) return;
        if (es.readyState === EventSource.CLOSED) {
          setState('disconnected');
          // surface 401/403/404 through a normal request
          loadTask().catch(() => {});
        } else {
          setState('reconnecting');
        }
      };
    };
    let metaTimer = 0;
    const metaSoon = () => {
      clearTimeout(metaTimer);
      metaTimer = setTimeout(() => { stopped = false; metaPoll.now(); }, 300);
    };
    s.add(() => { clearTimeout(metaTimer); if (es) es.close(); es = null; });
    restartBtn.addEventListener('click', () => { timeline.reset(); open(); });
    meta.append(h('dd', { class: 'muted', text: 'Loading…' }));
    open();
    return 'tasks';
  }

  function timeCell(ts) {
    const t = num(ts);
    if (t == null || t <= 0) return '—';
    return h('span', { title: fmtAgo(t) }, fmtTime(t), ' ', h('span', { class: 'muted small', text: `(${fmtAgo(t)})` }));
  }

  function resultText(result) {
    if (result == null || result === '') return null;
    let r = result;
    if (typeof r === 'string') {
      try { r = JSON.parse(r); } catch (_) { return r; }
    }
    if (r && typeof r === 'object' && !Array.isArray(r) && 'output' in r) {
      return typeof r.output === 'string' ? r.output : pretty(r.output);
    }
    return pretty(r);
  }

  // --------------------------------------------------------------- timeline
  const TEXTUAL = { text: 'text', reasoning_text: 'text', reasoning: 'text', thinking: 'text' };
  const CHUNK_CHARS = 8192;
  const FRAME_BUDGET_MS = 10;

  /**
   * Incremental event timeline. Events are queued and applied once per
   * animation frame (time-boxed); text deltas are appended to an existing
   * text node; nothing already rendered is ever rebuilt.
   */
  class Timeline {
    constructor(root, countEl, tokensEl, followEl, onStatusEvent) {
      this.root = root;
      this.countEl = countEl;
      this.tokensEl = tokensEl;
      this.followEl = followEl;
      this.onStatusEvent = onStatusEvent || (() => {});
      this.disposed = false;
      // Follow mode: stay pinned to the bottom until the user scrolls away.
      this.pinned = true;
      const userScroll = () => requestAnimationFrame(() => { this.pinned = this.distanceToBottom() < 48; });
      for (const t of ['wheel', 'touchmove', 'keydown', 'pointerdown']) root.addEventListener(t, userScroll, { passive: true });
      root.addEventListener('scroll', () => { if (this.distanceToBottom() < 48) this.pinned = true; }, { passive: true });
      followEl.addEventListener('change', () => { if (followEl.checked) { this.pinned = true; this.scrollToEnd(); } });
      this.reset();
    }
    distanceToBottom() { const r = this.root; return r.scrollHeight - r.scrollTop - r.clientHeight; }
    scrollToEnd() { this.root.scrollTop = this.root.scrollHeight; }
    reset() {
      this.root.replaceChildren();
      this.queue = [];
      this.qi = 0;
      this.scheduled = false;
      this.count = 0;
      this.container = this.root;
      this.step = null; // {el, head, body, number, usageSeen}
      this.textBlock = null; // {el, node, len, type, pending}
      this.tools = new Map(); // tool_call_id -> card
      this.toolIdx = new Map(); // index -> card (current step)
      this.tokens = { input: 0, output: 0, total: 0 };
      this.ended = false;
      this.pinned = true;
      this.stats = { firstEventAt: 0, lastFlushAt: 0, maxFlushMs: 0, flushes: 0, endedAt: 0 };
      window.__exoTimeline = this.stats;
      this.countEl.textContent = '0';
      this.tokensEl.textContent = '0';
      this.root.dataset.ended = 'false';
    }
    dispose() { this.disposed = true; this.queue = []; }
    /** Queues one event (raw SSE data string or parsed object); rendering happens in flush(). */
    push(ev) {
      if (!this.stats.firstEventAt) this.stats.firstEventAt = performance.now();
      this.queue.push(ev);
      if (!this.scheduled) this.schedule();
    }
    end() {
      this.ended = true;
      this.endPending = true;
      this.schedule();
    }
    schedule() {
      if (this.scheduled || this.disposed) return;
      this.scheduled = true;
      if (document.hidden) setTimeout(() => this.flush(), 250);
      else requestAnimationFrame(() => this.flush());
    }
    flush() {
      this.scheduled = false;
      if (this.disposed) return;
      const t0 = performance.now();
      let n = 0;
      while (this.qi < this.queue.length) {
        this.apply(this.queue[this.qi++]);
        if ((++n & 15) === 0 && performance.now() - t0 > FRAME_BUDGET_MS) break;
      }
      this.flushText();
      if (this.qi >= this.queue.length) { this.queue = []; this.qi = 0; }
      this.countEl.textContent = intFormat.format(this.count);
      this.root.dataset.count = String(this.count);
      this.tokensEl.textContent = intFormat.format(this.tokens.total);
      this.tokensEl.title = `input ${this.tokens.input} · output ${this.tokens.output} · total ${this.tokens.total}`;
      if (this.pinned && this.followEl.checked) this.scrollToEnd();
      const dt = performance.now() - t0;
      this.stats.flushes++;
      this.stats.maxFlushMs = Math.max(this.stats.maxFlushMs, dt);
      this.stats.lastFlushAt = performance.now();
      this.stats.count = this.count;
      if (this.queue.length) { this.schedule(); return; }
      if (this.endPending) {
        this.endPending = false;
        this.closeText();
        this.root.dataset.ended = 'true';
        this.stats.endedAt = performance.now();
        const total = this.stats.endedAt - this.stats.firstEventAt;
        console.info(`[exo] timeline: ${this.count} events rendered in ${total.toFixed(0)} ms ` +
          `(${this.stats.flushes} flushes, longest ${this.stats.maxFlushMs.toFixed(1)} ms)`);
      }
    }

    // ---- building blocks
    add(el) {
      this.container.append(el);
      return el;
    }
    evEl(type, cls, ...children) {
      return h('div', { class: `ev ${cls || ''}`, dataset: { eventType: type } }, ...children);
    }
    flushText() {
      const b = this.textBlock;
      if (!b || !b.pending) return;
      let s = b.pending;
      b.pending = '';
      if (b.len > CHUNK_CHARS) {
        const i = s.lastIndexOf('\n');
        if (i >= 0) {
          b.node.appendData(s.slice(0, i + 1));
          s = s.slice(i + 1);
          b.node = document.createTextNode('');
          b.el.append(h('div', { class: 'text-chunk' }, b.node));
          b.len = 0;
        }
      }
      if (s) { b.node.appendData(s); b.len += s.length; }
    }
    closeText() {
      this.flushText();
      if (this.textBlock) this.textBlock.el.classList.remove('streaming');
      this.textBlock = null;
    }
    apply(raw) {
      this.count++;
      let ev = raw;
      if (typeof raw === 'string') {
        try { ev = JSON.parse(raw); } catch (_) { ev = { type: 'unparsed', data: raw }; }
      }
      if (!ev || typeof ev !== 'object') ev = { type: 'unknown', value: ev };
      const type = str(ev.type) || 'unknown';
      if (TEXTUAL[type]) { this.onText(type, ev); return; }
      this.closeText();
      switch (type) {
        case 'status': this.onStatus(ev); break;
        case 'step': this.onStep(ev); break;
        case 'tool_call_delta': this.onToolDelta(ev); break;
        case 'tool_call': this.onToolCall(ev); break;
        case 'tool_result': this.onToolResult(ev); break;
        case 'usage': this.onUsage(ev); break;
        case 'error': this.onError(ev); break;
        default: this.onOther(type, ev);
      }
    }
    onText(type, ev) {
      const text = str(ev.text != null ? ev.text : ev.delta);
      const b = this.textBlock;
      if (b && b.type === type && b.container === this.container) { b.pending += text; return; }
      this.closeText();
      const node = document.createTextNode('');
      const el = this.evEl(type, `ev-text streaming${type !== 'text' ? ' ev-reasoning' : ''}`,
        type !== 'text' ? h('div', { class: 'ev-label', text: type.replace(/_/g, ' ') }) : null,
        h('div', { class: 'text-chunk' }, node));
      this.add(el);
      this.textBlock = { el, node, len: 0, type, pending: text, container: this.container };
    }
    onStatus(ev) {
      const st = str(ev.status) || 'unknown';
      this.onStatusEvent(st);
      const el = this.evEl('status', `ev-status${st === 'error' ? ' ev-bad' : ''}`,
        h('span', { class: 'ev-label', text: 'status' }), badge(st), ' ',
        h('span', { class: 'ev-msg', text: str(ev.message) }),
        ev.agent_name ? h('span', { class: 'muted small', text: ` · ${str(ev.agent_name)}` }) : null);
      el.dataset.status = st;
      if (st === 'starting' && this.step) this.leaveStep();
      this.add(el);
    }
    onStep(ev) {
      const n = str(ev.step_number);
      const status = str(ev.status);
      if (status === 'started' || !this.step || this.step.number !== n) this.openStep(n, ev);
      if (status === 'started') return;
      // completed (or any other terminal step status)
      const st = this.step;
      const usage = ev.usage && typeof ev.usage === 'object' ? ev.usage : null;
      if (usage && !st.usageSeen) this.addTokens(usage);
      const dur = span(ev.started_at, ev.completed_at);
      const parts = [];
      if (dur != null) parts.push(fmtDur(dur));
      if (usage) parts.push(`${fmtInt(usage.total_tokens)} tokens (in ${fmtInt(usage.input_tokens)} / out ${fmtInt(usage.output_tokens)})`);
      st.summary.textContent = parts.length ? ` · ${parts.join(' · ')}` : '';
      st.el.classList.remove('running');
      st.el.dataset.stepStatus = status;
      st.body.append(h('div', { class: 'ev ev-step-end', dataset: { eventType: 'step', stepStatus: status } },
        h('span', { text: `step ${n} ${status}` }), parts.length ? h('span', { class: 'muted', text: ` · ${parts.join(' · ')}` }) : null));
      this.leaveStep();
    }
    openStep(n, ev) {
      if (this.step) this.leaveStep();
      const summary = h('span', { class: 'step-summary muted small' });
      const head = h('div', { class: 'step-head', dataset: { eventType: 'step', stepStatus: 'started' } },
        h('span', { class: 'step-title', text: `Step ${n || '?'}` }),
        ev.agent_name ? h('span', { class: 'muted', text: ` · ${str(ev.agent_name)}` }) : null,
        num(ev.started_at) ? h('span', { class: 'muted small', text: ` · started ${fmtTime(ev.started_at).slice(11)}` }) : null,
        summary);
      const body = h('div', { class: 'step-body' });
      const el = h('section', { class: 'step running', dataset: { step: n, stepStatus: 'started' } }, head, body);
      this.root.append(el);
      this.step = { el, head, body, summary, number: n, usageSeen: false };
      this.container = body;
      this.toolIdx = new Map();
    }
    leaveStep() {
      this.closeText();
      this.step = null;
      this.container = this.root;
    }
    toolCard(id, index, name) {
      const args = document.createTextNode('');
      const nameEl = h('span', { class: 'tool-name', text: name || 'tool' });
      const idEl = h('span', { class: 'muted small mono', text: id ? ` ${id}` : '' });
      const el = this.evEl('tool_call', 'ev-tool',
        h('div', { class: 'ev-head' }, h('span', { class: 'ev-label', text: 'tool call' }), nameEl, idEl),
        h('pre', { class: 'args' }, args));
      el.dataset.state = 'streaming';
      const card = { el, args, nameEl, idEl, id, index, raw: '' };
      if (id) { this.tools.set(id, card); el.dataset.toolCallId = id; }
      if (index != null) this.toolIdx.set(index, card);
      this.add(el);
      return card;
    }
    onToolDelta(ev) {
      const id = str(ev.tool_call_id), idx = str(ev.index);
      let card = (id && this.tools.get(id)) || (!id ? this.toolIdx.get(idx) : null);
      if (!card || card.el.dataset.state === 'complete') card = this.toolCard(id, idx, str(ev.tool_name));
      if (id && !card.id) { card.id = id; this.tools.set(id, card); card.el.dataset.toolCallId = id; card.idEl.textContent = ` ${id}`; }
      if (ev.tool_name && card.nameEl.textContent === 'tool') card.nameEl.textContent = str(ev.tool_name);
      const d = str(ev.arguments_delta);
      card.raw += d;
      card.args.appendData(d);
      card.deltas = (card.deltas || 0) + 1;
    }
    onToolCall(ev) {
      const id = str(ev.tool_call_id);
      let card = id ? this.tools.get(id) : null;
      if (!card || card.el.dataset.state === 'complete') card = this.toolCard(id, null, str(ev.tool_name));
      if (ev.tool_name) card.nameEl.textContent = str(ev.tool_name);
      card.args.data = pretty(ev.arguments != null ? ev.arguments : card.raw);
      card.el.dataset.state = 'complete';
      // keep stream order visible: a call announced after other events moves to the end
      if (card.el !== this.container.lastElementChild) this.add(card.el);
    }
    onToolResult(ev) {
      const ok = ev.success !== false && !ev.error;
      const res = ev.result;
      const resText = typeof res === 'string' ? res : pretty(res);
      const el = this.evEl('tool_result', `ev-tool-result${ok ? '' : ' ev-bad'}`,
        h('div', { class: 'ev-head' },
          h('span', { class: 'ev-label', text: 'tool result' }),
          h('span', { class: 'tool-name', text: str(ev.tool_name) }),
          badge(ok ? 'success' : 'error'),
          ev.duration_ms != null ? h('span', { class: 'muted small', text: ` ${fmtMs(ev.duration_ms)}` }) : null,
          ev.tool_call_id ? h('span', { class: 'muted small mono', text: ` ${str(ev.tool_call_id)}` }) : null),
        ev.arguments != null && !this.tools.has(str(ev.tool_call_id))
          ? h('details', null, h('summary', { text: 'arguments' }), h('pre', { class: 'args', text: pretty(ev.arguments) })) : null,
        resText ? h('pre', { class: 'result', text: resText }) : null,
        ev.error ? h('pre', { class: 'error-text', text: str(ev.error) }) : null);
      el.dataset.success = String(ok);
      if (ev.tool_call_id) el.dataset.toolCallId = str(ev.tool_call_id);
      this.add(el);
    }
    addTokens(u) {
      this.tokens.input += num(u.input_tokens) || 0;
      this.tokens.output += num(u.output_tokens) || 0;
      this.tokens.total += num(u.total_tokens) || ((num(u.input_tokens) || 0) + (num(u.output_tokens) || 0));
    }
    onUsage(ev) {
      const u = ev.usage && typeof ev.usage === 'object' ? ev.usage : {};
      this.addTokens(u);
      if (this.step) this.step.usageSeen = true;
      this.add(this.evEl('usage', 'ev-usage',
        h('span', { class: 'ev-label', text: 'usage' }),
        `in ${fmtInt(u.input_tokens)} · out ${fmtInt(u.output_tokens)} · total ${fmtInt(u.total_tokens)}`,
        ev.model ? h('span', { class: 'muted', text: ` · ${str(ev.model)}` }) : null,
        h('span', { class: 'muted', text: ` · run total ${intFormat.format(this.tokens.total)}` })));
    }
    onError(ev) {
      const extra = Object.assign({}, ev);
      for (const k of ['type', 'error', 'error_type', 'agent_name']) delete extra[k];
      this.add(this.evEl('error', 'ev-error ev-bad',
        h('div', { class: 'ev-head' }, h('span', { class: 'ev-label', text: 'error' }),
          ev.error_type ? h('span', { class: 'mono', text: str(ev.error_type) }) : null),
        h('pre', { class: 'error-text', text: str(ev.error) || pretty(ev) }),
        Object.keys(extra).length ? h('div', { class: 'muted small', text: Object.entries(extra).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' · ') }) : null));
    }
    onOther(type, ev) {
      const rest = Object.assign({}, ev);
      delete rest.type;
      const json = pretty(rest);
      this.add(this.evEl(type, 'ev-other',
        h('details', null, h('summary', null, h('span', { class: 'ev-label', text: type.replace(/_/g, ' ') }),
          h('span', { class: 'muted small', text: ` ${json.replace(/\s+/g, ' ').slice(0, 120)}` })),
        h('pre', { text: json }))));
    }
  }

  // ----------------------------------------------------------- dead letters
  function viewDeadLetters() {
    document.title = 'Dead letters · exo';
    const s = currentScope;
    const tbody = h('tbody');
    const notice = h('p', { id: 'dead-letters-notice', class: 'notice', 'aria-live': 'polite', hidden: true });
    const countEl = h('span', { id: 'dead-letters-count', class: 'muted' });
    const updated = h('span', { class: 'updated muted' });
    const table = h('table', { id: 'dead-letters-table', class: 'data' },
      h('caption', { class: 'sr-only', text: 'Dead-lettered tasks' }),
      h('thead', null, h('tr', null,
        ['Task', 'Reason', 'Attempts', 'Failed at', 'Entry', 'Payload', '']
          .map((t) => h('th', { scope: 'col', text: t })))),
      tbody);
    mount(h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h1', { text: 'Dead letters' }), countEl, h('span', { class: 'spacer' }), updated),
      notice,
      h('div', { class: 'table-wrap' }, table)));
    emptyRow(tbody, 7, 'Loading…');
    const busy = new Set();

    const redriveBtn = (d) => {
      const entry = str(d.entry_id);
      const b = h('button', { type: 'button', class: 'small', dataset: { redrive: entry }, text: 'Redrive' });
      setRedriveState(b);
      return b;
    };
    const setRedriveState = (b) => {
      const allowed = can('admin');
      b.disabled = !allowed || busy.has(b.dataset.redrive);
      b.title = allowed ? 'Put this task back on the queue' : 'Needs the "admin" scope';
    };
    const columns = [
      { sig: (d) => str(d.task_id), render: (d) => (d.task_id ? taskLink(d.task_id, shortId(d.task_id)) : '—') },
      { sig: (d) => str(d.reason), render: (d) => h('span', { class: 'reason', text: str(d.reason) || '—' }) },
      { sig: (d) => str(d.attempts), class: 'num', render: (d) => fmtInt(d.attempts) },
      { sig: (d) => str(d.failed_at), render: (d) => h('span', { title: fmtAgo(d.failed_at), text: fmtTime(d.failed_at) }) },
      { sig: (d) => str(d.entry_id), render: (d) => h('span', { class: 'mono small', text: str(d.entry_id) }) },
      {
        sig: (d) => (typeof d.payload === 'string' ? d.payload : JSON.stringify(d.payload ?? null)),
        render: (d) => (d.payload == null ? '—' : h('details', null, h('summary', { text: 'show' }), h('pre', { class: 'payload', text: pretty(d.payload) }))),
      },
      { sig: () => 'btn', render: redriveBtn },
    ];
    const poller = s.poll(async () => {
      const data = await api('/v1/dead-letters?count=50', { key: 'dead-letters' });
      if (!s.alive) return;
      const list = Array.isArray(data && data.dead_letters) ? data.dead_letters : [];
      countEl.textContent = `${list.length} shown`;
      updated.textContent = `updated ${fmtClockSec(nowSec())}`;
      if (!list.length) { emptyRow(tbody, 7, 'No dead letters. 🎉'); return; }
      reconcileRows(tbody, list, (d) => d.entry_id, columns, (tr, d) => {
        tr.dataset.entryId = str(d.entry_id);
        tr.dataset.taskId = str(d.task_id);
      });
    }, DEAD_POLL_MS);
    s.onMe(() => tbody.querySelectorAll('button[data-redrive]').forEach(setRedriveState));

    tbody.addEventListener('click', async (ev) => {
      const b = ev.target.closest('button[data-redrive]');
      if (!b || b.disabled) return;
      const entry = b.dataset.redrive;
      busy.add(entry);
      setRedriveState(b);
      notice.hidden = false;
      notice.classList.remove('bad');
      notice.textContent = `Redriving ${entry}…`;
      try {
        const r = await api(`/v1/dead-letters/${encodeURIComponent(entry)}/redrive`, { method: 'POST', key: 'redrive' });
        notice.replaceChildren('Redriven: task ', r && r.task_id ? taskLink(r.task_id) : 'queued', ' is back on the queue.');
        notice.dataset.outcome = 'ok';
      } catch (e) {
        notice.textContent = `Redrive of ${entry} failed: ${e.message}`;
        notice.classList.add('bad');
        notice.dataset.outcome = 'error';
      }
      busy.delete(entry);
      setRedriveState(b);
      poller.now();
    });
    return 'dead-letters';
  }

  // ------------------------------------------------------------------- boot
  function boot() {
    // Path-style deep links (/tasks/<id>) become hash routes.
    if (!location.hash && location.pathname !== '/' && /^\/(tasks|workers|queue|dead-letters)(\/|$)/.test(location.pathname)) {
      history.replaceState(null, '', `/#${location.pathname}${location.search}`);
    }
    const input = $('#token-input');
    input.value = getToken();
    $('#token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (v) localStorage.setItem(TOKEN_KEY, v); else localStorage.removeItem(TOKEN_KEY);
      clearAllErrors();
      loadMe();
      route();
    });
    $('#token-clear').addEventListener('click', () => {
      input.value = '';
      localStorage.removeItem(TOKEN_KEY);
      clearAllErrors();
      loadMe();
      route();
    });
    $('#error-dismiss').addEventListener('click', clearAllErrors);
    window.addEventListener('hashchange', route);
    loadMe();
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
