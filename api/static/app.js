// The analyst console: live decisions, the review queue, one case at a time, verdicts.
// Every piece of data reaches the page through textContent or a Text node, never as markup.

import { ACTIONS, RateChart, ScoreHistogram } from './charts.js';
import { EventStream, errorMessage } from './sse.js';

const MAX_ROWS = 500; // rows kept in the live table's DOM
const TOKEN_KEY = 'fraudstream.token';
const QUEUE_REFRESH_MS = 15000;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  stream: null,
  paused: false,
  pending: [], // decisions waiting for the next animation frame
  held: [], // decisions that came while paused (the newest MAX_ROWS)
  heldCount: 0,
  totals: { all: 0, approve: 0, review: 0, decline: 0 },
  selected: null, // the tx_id of the open case
  openCase: null, // {txId, controller, narrative}
  queueCursor: null,
  queueMore: false,
  queueTimer: null,
  tab: 'live',
};

const rowData = new WeakMap(); // <tr> -> its decision

// --- small helpers ----------------------------------------------------------------------------

/** createElement with properties; string children become Text nodes (never parsed as HTML). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const PAN = /(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)/g;

function luhn(digits) {
  let sum = 0;
  for (let i = 0; i < digits.length; i += 1) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2) { d *= 2; if (d > 9) d -= 9; }
    sum += d;
  }
  return sum % 10 === 0;
}

/** A card number (13-19 digits passing Luhn) shows as BIN + last four, as the server masks it. */
export function maskPan(value) {
  const text = value == null ? '' : String(value);
  if (text.length < 13) return text;
  return text.replace(PAN, (match) => {
    const digits = match.replace(/[ -]/g, '');
    return luhn(digits) ? digits.slice(0, 6) + '*'.repeat(digits.length - 10) + digits.slice(-4) : match;
  });
}

function fmtTime(ts, short = false) {
  if (ts == null) return '';
  let text;
  if (typeof ts === 'number') text = new Date(ts < 1e11 ? ts * 1000 : ts).toISOString();
  else text = String(ts);
  text = text.replace('T', ' ').replace(/(\.\d+)?(Z|[+-]00:?00)$/, '');
  return short ? text.slice(5) : text;
}

const moneyFormats = new Map();
function fmtMoney(amount, currency) {
  if (typeof amount !== 'number') return String(amount ?? '');
  let format = moneyFormats.get(currency);
  if (format === undefined) {
    try {
      format = new Intl.NumberFormat(undefined, { style: 'currency', currency: currency || 'EUR' });
    } catch {
      format = null; // not an ISO 4217 code: show the number and the code as they are
    }
    moneyFormats.set(currency, format);
  }
  return format ? format.format(amount) : `${amount.toFixed(2)} ${currency ?? ''}`.trim();
}

function fmtNumber(value) {
  if (typeof value !== 'number') return String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 0.001 || abs >= 1e6)) return value.toExponential(2);
  return value.toLocaleString(undefined, { maximumFractionDigits: abs < 1 ? 4 : 2 });
}

const fmtScore = (score) => (typeof score === 'number' ? score.toFixed(3) : '–');

// --- API --------------------------------------------------------------------------------------

async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text }; }
  }
  if (response.status === 401 && state.token) {
    signOut('The token is no longer accepted. Sign in again.');
  }
  return { ok: response.ok, status: response.status, data, headers: response.headers };
}

// --- sign in ----------------------------------------------------------------------------------

function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  const error = $('login-error');
  error.hidden = !message;
  error.textContent = message || '';
  $('token-input').value = '';
  $('token-input').focus();
}

async function signIn(token) {
  state.token = token;
  let result;
  try {
    result = await api('/v1/cases?limit=1');
  } catch {
    state.token = null;
    return 'Cannot reach the API. Is fraudstream running?';
  }
  if (result.status === 401) {
    state.token = null;
    return 'This token is not valid.';
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
  return null;
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.stream?.stop();
  state.stream = null;
  closeCase();
  clearInterval(state.queueTimer);
  showLogin(message);
}

// --- the live stream --------------------------------------------------------------------------

const rateChart = new RateChart($('rate-chart'));
const scoreChart = new ScoreHistogram($('score-chart'), { window: 10000 });

function filterQuery() {
  const params = new URLSearchParams();
  const on = [...document.querySelectorAll('.chip[data-action]')]
    .filter((chip) => chip.getAttribute('aria-pressed') === 'true')
    .map((chip) => chip.dataset.action);
  if (on.length < ACTIONS.length) on.forEach((action) => params.append('action', action));
  const minScore = Number($('f-score').value);
  if (minScore > 0) params.set('min_score', String(minScore));
  const merchant = $('f-merchant').value.trim();
  if (merchant) params.set('merchant', merchant);
  const card = $('f-card').value.trim();
  if (card) params.set('card', card);
  return params.toString();
}

function connect() {
  state.stream?.stop();
  const query = filterQuery();
  state.stream = new EventStream({
    url: `/v1/decisions/stream${query ? `?${query}` : ''}`,
    token: state.token,
    onEvent: onStreamEvent,
    onState: onStreamState,
  }).start();
}

function onStreamEvent(type, data) {
  if (type === 'decision' && data && typeof data === 'object') receive(data);
  else if (type === 'gap') {
    const missed = data?.missed;
    const what = missed == null ? 'Some decisions were' : `${missed.toLocaleString()} decisions were`;
    const why = data?.reason === 'slow'
      ? 'this console fell behind the stream'
      : 'they had already left the server’s buffer';
    notice(`${what} skipped: ${why}.`, 'warn');
  }
}

function onStreamState(stateName, detail) {
  const conn = $('conn');
  const labels = {
    connecting: 'connecting…',
    open: 'live',
    reconnecting: `reconnecting in ${Math.round((detail || 0) / 1000)} s`,
    failed: 'stream refused',
    forbidden: 'not allowed',
    closed: 'closed',
  };
  if (stateName === 'unauthorized') {
    signOut('The token is no longer accepted. Sign in again.');
    return;
  }
  if (stateName === 'closed' && conn.dataset.state !== 'open') return;
  const shown = state.paused && stateName === 'open' ? 'paused' : stateName;
  conn.dataset.state = shown;
  $('conn-text').textContent = shown === 'paused' ? 'paused (still receiving)' : labels[stateName] || stateName;
  if (stateName === 'failed' || stateName === 'forbidden') {
    notice(`The decision stream was refused: ${detail?.message || 'unknown error'}`, 'error');
  }
}

function receive(decision) {
  const action = decision.action;
  state.totals.all += 1;
  if (action in state.totals) state.totals[action] += 1;
  rateChart.add(action);
  scoreChart.add(action, decision.score);
  if (action === 'review' || action === 'decline') queueSoon();
  if (state.paused) {
    state.held.push(decision);
    if (state.held.length > MAX_ROWS * 2) state.held.splice(0, state.held.length - MAX_ROWS);
    state.heldCount += 1;
  } else {
    state.pending.push(decision);
    if (state.pending.length > MAX_ROWS * 2) state.pending.splice(0, state.pending.length - MAX_ROWS);
  }
  scheduleFlush();
}

let flushScheduled = false;
function scheduleFlush() {
  if (flushScheduled) return;
  flushScheduled = true;
  requestAnimationFrame(flush);
}

/** Once per frame: the new rows go in at the top together, the oldest fall off the bottom. */
function flush() {
  flushScheduled = false;
  const body = $('live-body');
  let batch = state.pending;
  state.pending = [];
  if (batch.length > MAX_ROWS) batch = batch.slice(-MAX_ROWS);
  if (batch.length) {
    const fragment = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i -= 1) fragment.append(decisionRow(batch[i]));
    body.prepend(fragment);
    let extra = body.childElementCount - MAX_ROWS;
    while (extra-- > 0) body.lastElementChild.remove();
  }
  $('live-empty').hidden = body.childElementCount > 0;
  $('live-count').textContent = body.childElementCount.toLocaleString();
  for (const key of ['all', ...ACTIONS]) $(`count-${key}`).textContent = state.totals[key].toLocaleString();
  $('pause').textContent = state.paused ? `Resume${state.heldCount ? ` · ${state.heldCount.toLocaleString()} new` : ''}` : 'Pause';
}

function decisionRow(d) {
  const tr = document.createElement('tr');
  tr.className = `row-${d.action}`;
  tr.dataset.tx = d.tx_id;
  if (d.tx_id === state.selected) tr.classList.add('selected');
  rowData.set(tr, d);
  const cell = (text, cls) => {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    td.textContent = text;
    tr.append(td);
    return td;
  };
  cell(fmtTime(d.ts, true), 'mono');
  cell(d.tx_id, 'mono ellipsis');
  cell(maskPan(d.card_id), 'mono');
  cell(maskPan(d.merchant_id), 'mono');
  cell(fmtMoney(d.amount, d.currency), 'num');
  const score = cell('', 'score');
  const bar = document.createElement('span');
  bar.className = 'score-bar';
  bar.style.setProperty('--w', `${Math.round(Math.min(1, Math.max(0, d.score || 0)) * 100)}%`);
  score.append(bar, fmtScore(d.score));
  const pill = document.createElement('span');
  pill.className = `pill pill-${d.action}`;
  pill.textContent = d.action;
  cell('').append(pill);
  const top = Array.isArray(d.reasons) && d.reasons.length ? d.reasons[0] : null;
  const reason = cell(top ? maskPan(top.text || top.code) : '', 'reason ellipsis');
  if (top) reason.title = maskPan(top.text || top.code);
  return tr;
}

function setPaused(paused) {
  state.paused = paused;
  $('pause').setAttribute('aria-pressed', String(paused));
  if (!paused) {
    state.pending.push(...state.held);
    state.held = [];
    state.heldCount = 0;
  }
  const conn = $('conn');
  if (conn.dataset.state === 'open' || conn.dataset.state === 'paused') onStreamState('open');
  scheduleFlush();
}

function clearTable() {
  $('live-body').replaceChildren();
  state.pending = [];
  state.held = [];
  state.heldCount = 0;
  state.totals = { all: 0, approve: 0, review: 0, decline: 0 };
  rateChart.reset();
  scoreChart.reset();
  scheduleFlush();
}

// --- notices ----------------------------------------------------------------------------------

let noticeTimer = null;
function notice(message, kind = 'info') {
  const box = $('notice');
  box.dataset.kind = kind;
  $('notice-text').textContent = message;
  box.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== 'error') noticeTimer = setTimeout(() => { box.hidden = true; }, 10000);
}

// --- the review queue -------------------------------------------------------------------------

async function loadQueue(more = false) {
  const cursor = more ? state.queueCursor : null;
  const path = `/v1/cases?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
  let result;
  try {
    result = await api(path);
  } catch {
    return;
  }
  if (!result.ok) {
    if (result.status !== 401) notice(`Review queue: ${errorMessage(result.data) || result.status}`, 'warn');
    return;
  }
  const items = Array.isArray(result.data) ? result.data : result.data?.items || [];
  state.queueCursor = result.data?.next_cursor ?? null;
  state.queueMore = more; // while further pages are shown, the timer leaves the list alone
  const body = $('queue-body');
  const rows = items.map(decisionRow);
  if (more) body.append(...rows);
  else body.replaceChildren(...rows);
  $('queue-empty').hidden = body.childElementCount > 0;
  $('queue-more').hidden = !state.queueCursor;
  $('queue-count').textContent = `${body.childElementCount}${state.queueCursor ? '+' : ''}`;
}

/** A new case arrived: re-read the queue's first page, at most once every few seconds. */
let queueSoonTimer = null;
function queueSoon() {
  if (queueSoonTimer || state.queueMore) return;
  queueSoonTimer = setTimeout(() => {
    queueSoonTimer = null;
    if (state.token && !document.hidden) loadQueue();
  }, 3000);
}

function showTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll('[role="tab"]')) {
    button.setAttribute('aria-selected', String(button.dataset.tab === tab));
  }
  $('live-pane').hidden = tab !== 'live';
  $('queue-pane').hidden = tab !== 'queue';
  $('tab-note').textContent = tab === 'live'
    ? `newest first · up to ${MAX_ROWS} rows`
    : 'review and decline without a verdict · highest score first';
  if (tab === 'queue') loadQueue();
}

// --- the case panel ---------------------------------------------------------------------------

function closeCase() {
  const open = state.openCase;
  if (open) {
    open.controller.abort();
    open.narrative?.stop();
  }
  state.openCase = null;
  state.selected = null;
  for (const tr of document.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  const panel = $('case');
  panel.classList.remove('open');
  panel.querySelector('.case-body')?.remove();
  panel.querySelector('.case-empty').hidden = false;
}

function markSelected(txId) {
  for (const tr of document.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  for (const tr of document.querySelectorAll(`tr[data-tx="${CSS.escape(txId)}"]`)) tr.classList.add('selected');
}

function section(title, ...children) {
  return h('section', { class: 'case-section' }, h('h3', { text: title }), ...children);
}

function openCase(decision) {
  closeCase();
  const txId = decision.tx_id;
  const controller = new AbortController();
  state.openCase = { txId, controller, narrative: null };
  state.selected = txId;
  markSelected(txId);

  const panel = $('case');
  panel.querySelector('.case-empty').hidden = true;
  panel.classList.add('open');
  const view = {
    verdict: h('div', { class: 'verdict-box' }),
    narrative: h('div', { class: 'narrative-box' }),
    history: h('div', { class: 'history-box' }, h('p', { class: 'muted', text: 'Loading…' })),
  };
  const body = h('div', { class: 'case-body', 'data-tx': txId },
    caseHeader(decision),
    caseFacts(decision),
    section('Reasons', reasonList(decision.reasons)),
    section('Narrative', view.narrative),
    section('Verdict', view.verdict),
    section('Features', featureTable(decision.features)),
    section(`Card ${maskPan(decision.card_id)} · recent decisions`, view.history),
  );
  panel.append(body);
  body.scrollTop = 0;

  renderVerdict(view.verdict, decision, null, true);
  startNarrative(view.narrative, decision);
  loadDetail(view.verdict, decision, controller.signal);
  loadHistory(view.history, decision, controller.signal);
}

function caseHeader(d) {
  return h('header', { class: 'case-head' },
    h('div', { class: 'case-title' },
      h('span', { class: `pill pill-${d.action} pill-large`, text: d.action }),
      h('div', {},
        h('div', { class: 'case-label', text: 'transaction' }),
        h('h2', { class: 'mono', text: d.tx_id }))),
    h('div', { class: `case-score score-${d.action}` },
      h('strong', { text: fmtScore(d.score) }),
      h('span', { text: 'fraud score' })),
    h('button', { type: 'button', class: 'ghost close', 'aria-label': 'close case', onclick: closeCase }, '×'));
}

function caseFacts(d) {
  const facts = [
    ['Event time (UTC)', fmtTime(d.ts)],
    ['Amount', fmtMoney(d.amount, d.currency)],
    ['Card', maskPan(d.card_id)],
    ['Merchant', maskPan(d.merchant_id)],
    ['Decided at (UTC)', fmtTime(d.decided_at)],
    ['Latency', typeof d.latency_ms === 'number' ? `${d.latency_ms.toFixed(1)} ms` : '–'],
    ['Model', d.model_version ?? '–'],
    ['Policy', d.policy_version ?? '–'],
  ];
  for (const name of ['merchant_name', 'mcc', 'country', 'channel', 'memo']) {
    if (d[name] != null && d[name] !== '') facts.push([name.replace('_', ' '), maskPan(d[name])]);
  }
  return h('dl', { class: 'facts' }, facts.map(([k, v]) => h('div', {}, h('dt', { text: k }), h('dd', { text: String(v) }))));
}

function reasonList(reasons) {
  if (!Array.isArray(reasons) || !reasons.length) return h('p', { class: 'muted', text: 'No reasons given.' });
  const top = Math.max(...reasons.map((r) => Math.abs(Number(r.weight) || 0)), 1e-9);
  return h('ol', { class: 'reasons' }, reasons.map((r) => {
    const weight = Number(r.weight) || 0;
    const bar = h('span', { class: `weight-bar${weight < 0 ? ' negative' : ''}` });
    bar.style.setProperty('--w', `${Math.round((Math.abs(weight) / top) * 100)}%`);
    return h('li', {},
      h('div', { class: 'reason-text' }, h('code', { text: r.code || '' }), h('span', { text: maskPan(r.text || '') })),
      h('div', { class: 'reason-weight' }, bar, h('span', { class: 'mono', text: weight.toFixed(3) })));
  }));
}

function featureTable(features) {
  const entries = features && typeof features === 'object' ? Object.entries(features) : [];
  if (!entries.length) return h('p', { class: 'muted', text: 'No features recorded.' });
  return h('table', { class: 'features' },
    h('tbody', {}, entries.map(([name, value]) =>
      h('tr', {}, h('th', { class: 'mono', text: name }), h('td', { class: 'num mono', text: fmtNumber(value) })))));
}

async function loadDetail(box, decision, signal) {
  try {
    const result = await api(`/v1/decisions/${encodeURIComponent(decision.tx_id)}`, { signal });
    if (signal.aborted) return;
    if (result.ok) renderVerdict(box, result.data?.decision || decision, result.data?.verdict || null, false);
    else if (result.status === 404) renderVerdict(box, decision, null, false, 'This decision is no longer held by the API; a verdict can only be given on recent decisions.');
    else renderVerdict(box, decision, null, false);
  } catch {
    if (!signal.aborted) renderVerdict(box, decision, null, false);
  }
}

function verdictLine(v) {
  return h('p', { class: `verdict-current verdict-${v.verdict}` },
    h('strong', { text: v.verdict === 'fraud' ? 'Fraud' : 'Legitimate' }),
    ` · by ${v.by ?? 'unknown'}${v.at ? ` at ${fmtTime(v.at)} UTC` : ''}`,
    v.note ? h('span', { class: 'verdict-note', text: `“${v.note}”` }) : null);
}

/** The verdict box: the verdict in force, or buttons to give one (and to change it). */
function renderVerdict(box, decision, verdict, loading, warning) {
  const message = h('p', { class: 'verdict-message', role: 'status' });
  const note = h('textarea', { class: 'note', rows: '2', maxlength: '1000', placeholder: 'Note (optional): what you checked, who you called…' });
  const buttons = h('div', { class: 'verdict-buttons' });
  const send = async (choice, change) => {
    for (const b of buttons.querySelectorAll('button')) b.disabled = true;
    message.className = 'verdict-message';
    message.textContent = 'Sending…';
    let result;
    try {
      result = await api(`/v1/decisions/${encodeURIComponent(decision.tx_id)}/verdict`, {
        method: 'POST',
        body: { verdict: choice, note: note.value.trim(), change },
      });
    } catch {
      message.className = 'verdict-message error';
      message.textContent = 'Cannot reach the API; the verdict was not recorded.';
      for (const b of buttons.querySelectorAll('button')) b.disabled = false;
      return;
    }
    if (result.status === 201 || result.status === 200) {
      renderVerdict(box, decision, result.data, false);
      box.querySelector('.verdict-message').textContent = 'Recorded; the model will learn from it.';
      onVerdict(decision.tx_id);
      return;
    }
    for (const b of buttons.querySelectorAll('button')) b.disabled = false;
    message.className = 'verdict-message error';
    if (result.status === 409) {
      message.textContent = `Already decided: ${errorMessage(result.data) || 'this case has a verdict'}. `;
      message.append(h('button', {
        type: 'button',
        class: 'link',
        onclick: () => send(choice, true),
      }, `Change it to ${choice}`));
    } else if (result.status === 403) {
      message.textContent = 'Your token may read but not give verdicts (the analyst role is needed).';
    } else if (result.status === 429) {
      message.textContent = `Too many verdicts at once; try again in ${result.headers.get('Retry-After') || 'a few'} s.`;
    } else if (result.status !== 401) {
      message.textContent = errorMessage(result.data) || `The API answered ${result.status}.`;
    }
  };
  const fraud = h('button', { type: 'button', class: 'verdict fraud', onclick: () => send('fraud', Boolean(verdict)) }, 'Fraud');
  const legit = h('button', { type: 'button', class: 'verdict legit', onclick: () => send('legit', Boolean(verdict)) }, 'Legitimate');
  buttons.append(fraud, legit);
  if (loading) for (const b of [fraud, legit]) b.disabled = true;

  const parts = [];
  if (warning) parts.push(h('p', { class: 'muted', text: warning }));
  if (verdict) {
    parts.push(verdictLine(verdict));
    const change = h('button', { type: 'button', class: 'link', onclick: () => { editor.hidden = false; change.hidden = true; } }, 'Change verdict');
    const editor = h('div', { class: 'verdict-editor' }, note, buttons);
    editor.hidden = true;
    parts.push(change, editor);
  } else {
    parts.push(note, buttons);
  }
  parts.push(message);
  box.replaceChildren(...parts);
}

function onVerdict(txId) {
  for (const tr of document.querySelectorAll(`#queue-body tr[data-tx="${CSS.escape(txId)}"]`)) tr.remove();
  for (const tr of document.querySelectorAll(`tr[data-tx="${CSS.escape(txId)}"]`)) tr.classList.add('judged');
  const queue = $('queue-body');
  $('queue-empty').hidden = queue.childElementCount > 0;
  $('queue-count').textContent = `${queue.childElementCount}${state.queueCursor ? '+' : ''}`;
}

function startNarrative(box, decision) {
  if (decision.action === 'approve') {
    box.replaceChildren(h('p', { class: 'muted', text: 'Approved payments are not narrated: only escalated cases (review, decline) are.' }));
    return;
  }
  const source = h('span', { class: 'source-badge', hidden: true });
  const status = h('span', { class: 'narrative-status', text: 'waiting for the narrator…' });
  const text = document.createTextNode('');
  const body = h('p', { class: 'narrative streaming' }, text);
  const usage = h('p', { class: 'muted small', hidden: true });
  box.replaceChildren(h('div', { class: 'narrative-meta' }, source, status), body, usage);
  let lastSeq = -1;
  const open = state.openCase;
  open.narrative = new EventStream({
    url: `/v1/narratives/${encodeURIComponent(decision.tx_id)}/stream`,
    token: state.token,
    idleTimeout: 60000,
    stopWhen: (type, data) => Boolean(data && data.done),
    onEvent: (type, data) => {
      if (!data || typeof data !== 'object' || (data.tx_id != null && String(data.tx_id) !== String(decision.tx_id))) return;
      if (typeof data.seq === 'number') {
        if (data.seq <= lastSeq) return; // a repeat after a reconnect
        lastSeq = data.seq;
      }
      if (data.source) {
        source.hidden = false;
        source.dataset.source = data.source;
        source.textContent = data.source === 'llm' ? `LLM · ${data.model || 'model'}` : `template${data.model ? ` · ${data.model}` : ''}`;
        source.title = data.source === 'llm'
          ? 'Written by a language model: advisory, it never changes the decision.'
          : 'Written from the reason codes (no LLM was used).';
      }
      if (data.delta) text.appendData(maskPan(data.delta));
      status.textContent = 'writing…';
      if (data.done) {
        if (!text.data && data.text) text.data = maskPan(data.text);
        body.classList.remove('streaming');
        status.textContent = 'complete';
        const tokens = data.usage && (data.usage.total_tokens ?? data.usage.completion_tokens);
        if (tokens) { usage.hidden = false; usage.textContent = `${tokens.toLocaleString()} tokens`; }
      }
    },
    onState: (s, detail) => {
      if (s === 'reconnecting') status.textContent = 'reconnecting…';
      else if (s === 'failed' || s === 'forbidden') {
        body.classList.remove('streaming');
        status.textContent = detail?.status === 404 ? 'no narrative for this payment' : `unavailable (${detail?.message || 'error'})`;
      }
    },
  }).start();
}

async function loadHistory(box, decision, signal) {
  let result;
  try {
    result = await api(`/v1/cards/${encodeURIComponent(decision.card_id)}/history?limit=20`, { signal });
  } catch {
    if (!signal.aborted) box.replaceChildren(h('p', { class: 'muted', text: 'Could not load the card’s history.' }));
    return;
  }
  if (signal.aborted) return;
  const items = result.ok ? (Array.isArray(result.data) ? result.data : result.data?.items || []) : [];
  if (!items.length) {
    box.replaceChildren(h('p', { class: 'muted', text: result.ok ? 'No other recent decisions for this card.' : 'Could not load the card’s history.' }));
    return;
  }
  const rows = items.map((d) => {
    const tr = h('tr', { class: `row-${d.action}${d.tx_id === decision.tx_id ? ' current' : ''}`, dataset: { tx: d.tx_id } },
      h('td', { class: 'mono', text: fmtTime(d.ts, true) }),
      h('td', { class: 'mono', text: maskPan(d.merchant_id) }),
      h('td', { class: 'num', text: fmtMoney(d.amount, d.currency) }),
      h('td', { class: 'num mono', text: fmtScore(d.score) }),
      h('td', {}, h('span', { class: `pill pill-${d.action}`, text: d.action })));
    rowData.set(tr, d);
    return tr;
  });
  box.replaceChildren(h('table', { class: 'grid compact history' },
    h('thead', {}, h('tr', {}, ['time', 'merchant', 'amount', 'score', 'action'].map((t, i) => h('th', { class: i === 2 ? 'num' : null, text: t })))),
    h('tbody', {}, rows)));
}

// --- wiring -----------------------------------------------------------------------------------

function onRowClick(event) {
  const tr = event.target.closest('tr[data-tx]');
  if (!tr || event.target.closest('button, a')) return;
  const decision = rowData.get(tr);
  if (decision && decision.tx_id !== state.selected) openCase(decision);
}

function moveSelection(step) {
  const body = state.tab === 'live' ? $('live-body') : $('queue-body');
  const rows = [...body.children];
  if (!rows.length) return;
  let index = rows.findIndex((tr) => tr.dataset.tx === state.selected);
  index = index === -1 ? 0 : Math.min(rows.length - 1, Math.max(0, index + step));
  const tr = rows[index];
  tr.scrollIntoView({ block: 'nearest' });
  openCase(rowData.get(tr));
}

let filterTimer = null;
function filtersChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => { clearTable(); connect(); }, 300);
}

function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  clearTable();
  connect();
  loadQueue();
  clearInterval(state.queueTimer);
  // The queue's first page is re-read while the tab is open, so its badge stays current too.
  state.queueTimer = setInterval(() => {
    if (!document.hidden && state.token && !state.queueMore) loadQueue();
  }, QUEUE_REFRESH_MS);
}

function wire() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) return;
    const button = $('login-button');
    button.disabled = true;
    const error = await signIn(token);
    button.disabled = false;
    if (error) showLogin(error);
  });
  $('signout').addEventListener('click', () => signOut());
  $('live-body').addEventListener('click', onRowClick);
  $('queue-body').addEventListener('click', onRowClick);
  $('case').addEventListener('click', (event) => {
    if (event.target.closest('.history')) onRowClick(event);
  });
  for (const chip of document.querySelectorAll('.chip[data-action]')) {
    chip.addEventListener('click', () => {
      const pressed = chip.getAttribute('aria-pressed') === 'true';
      const others = [...document.querySelectorAll('.chip[aria-pressed="true"]')].length;
      if (pressed && others === 1) return; // at least one action stays selected
      chip.setAttribute('aria-pressed', String(!pressed));
      filtersChanged();
    });
  }
  $('f-score').addEventListener('input', () => {
    $('f-score-out').textContent = Number($('f-score').value).toFixed(2);
    filtersChanged();
  });
  $('f-merchant').addEventListener('input', filtersChanged);
  $('f-card').addEventListener('input', filtersChanged);
  $('pause').addEventListener('click', () => setPaused(!state.paused));
  $('clear').addEventListener('click', clearTable);
  $('notice-close').addEventListener('click', () => { $('notice').hidden = true; });
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener('click', () => showTab(tab.dataset.tab));
  }
  $('queue-refresh').addEventListener('click', () => loadQueue());
  $('queue-more').addEventListener('click', () => loadQueue(true));
  document.addEventListener('keydown', (event) => {
    if ($('app').hidden || event.target.closest('input, textarea, select')) return;
    if (event.key === 'Escape') closeCase();
    else if (event.key === 'ArrowDown' || event.key === 'j') { event.preventDefault(); moveSelection(1); }
    else if (event.key === 'ArrowUp' || event.key === 'k') { event.preventDefault(); moveSelection(-1); }
    else if (event.key === ' ' && !event.target.closest('button')) { event.preventDefault(); setPaused(!state.paused); }
  });
  // Charts redraw a few times a second at most, however fast decisions come.
  setInterval(() => {
    if (document.hidden || $('app').hidden) return;
    rateChart.draw();
    if (scoreChart.dirty) scoreChart.draw();
    $('count-rate').textContent = rateChart.lastSecond().toLocaleString();
  }, 250);
}

function boot() {
  wire();
  // `fraudstream up` prints a sign-in link with the token in the fragment (never sent to a
  // server); it is taken once and removed from the address bar and the history entry.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromLink = fragment.get('token');
  if (fromLink) history.replaceState(null, '', location.pathname + location.search);
  const token = fromLink || sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin();
    return;
  }
  signIn(token).then((error) => { if (error) showLogin(error); });
}

boot();
