// Server-Sent Events over fetch(): the bearer token travels in a header, never in a URL, which the
// browser's EventSource cannot do. Follows the WHATWG event-stream format: `event`, `data`, `id`,
// `retry`, comment lines; reconnects after the server's `retry` with `Last-Event-ID`.

/** Incremental parser of a text/event-stream; call feed() with decoded text as it arrives. */
export class EventStreamParser {
  constructor({ onEvent, onComment = () => {}, onRetry = () => {} }) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.onRetry = onRetry;
    this.buffer = '';
    this.reset();
  }

  reset() {
    this.data = [];
    this.event = '';
    this.id = null;
  }

  feed(text) {
    const buf = this.buffer + text;
    const len = buf.length;
    let pos = 0;
    // Positions of the next CR and LF, recomputed only once passed: linear in the input.
    let cr = -2;
    let lf = -2;
    while (pos < len) {
      if (cr !== -1 && cr < pos) cr = buf.indexOf('\r', pos);
      if (lf !== -1 && lf < pos) lf = buf.indexOf('\n', pos);
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr === len - 1) break; // a CR at the end may be half of a CRLF: wait for more
        end = cr;
        next = buf[cr + 1] === '\n' ? cr + 2 : cr + 1;
      } else if (lf !== -1) {
        end = lf;
        next = lf + 1;
      } else {
        break;
      }
      this.line(buf.slice(pos, end));
      pos = next;
    }
    this.buffer = buf.slice(pos);
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line[0] === ':') {
      this.onComment(line.slice(1).trim());
      return;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id') {
      if (!value.includes('\0')) this.id = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.onRetry(Number(value));
    }
  }

  dispatch() {
    // The id is taken only with a complete event, so a connection cut mid-event resumes before it.
    const event = { type: this.event || 'message', data: this.data.join('\n'), id: this.id };
    const complete = this.data.length > 0;
    this.reset();
    if (complete || event.id !== null) this.onEvent(event, complete);
  }
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });

/**
 * A self-reconnecting SSE subscription.
 *
 * options: url, token, lastEventId, onEvent(type, data, id), onState(state, detail),
 * stopWhen(type, data) -> true ends the stream for good (a finished narrative), idleTimeout ms.
 * States: connecting, open, reconnecting (detail: ms), unauthorized, forbidden, failed, closed.
 */
export class EventStream {
  constructor(options) {
    this.url = options.url;
    this.token = options.token;
    this.lastEventId = options.lastEventId || null;
    this.onEvent = options.onEvent;
    this.onState = options.onState || (() => {});
    this.stopWhen = options.stopWhen || (() => false);
    this.idleTimeout = options.idleTimeout ?? 45000;
    this.retry = 3000;
    this.failures = 0;
    this.stopped = false;
    this.controller = null; // one per connection
    this.life = new AbortController(); // aborted by stop() only
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
    this.life.abort();
    this.onState('closed');
  }

  async run() {
    while (!this.stopped) {
      this.controller = new AbortController();
      const { signal } = this.controller;
      this.onState('connecting');
      try {
        await this.connect(signal);
        this.failures = 0; // the server ended a healthy stream: come back after `retry`
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof HttpError) {
          if (error.status === 401) { this.stopped = true; this.onState('unauthorized', error); return; }
          if (error.status === 403) { this.stopped = true; this.onState('forbidden', error); return; }
          if (error.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429) {
            this.stopped = true;
            this.onState('failed', error);
            return;
          }
        }
        this.failures += 1;
      }
      if (this.stopped) return;
      // The server's retry, growing while connections keep failing, with jitter so many consoles
      // do not all come back in the same millisecond after a restart.
      const backoff = Math.min(30000, this.retry * 2 ** Math.max(0, this.failures - 1));
      const delay = Math.round(backoff * (0.8 + Math.random() * 0.4));
      this.onState('reconnecting', delay);
      await sleep(delay, this.life.signal);
    }
  }

  async connect(signal) {
    const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${this.token}` };
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    const response = await fetch(this.url, { headers, signal, cache: 'no-store' });
    if (!response.ok) {
      let message = '';
      try { message = errorMessage(await response.json()); } catch { /* not JSON */ }
      throw new HttpError(response.status, message);
    }
    this.onState('open');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let finished = false;
    const parser = new EventStreamParser({
      onRetry: (ms) => { this.retry = Math.max(250, ms); },
      onEvent: (event, complete) => {
        if (event.id !== null) this.lastEventId = event.id;
        if (!complete) return;
        let data = event.data;
        try { data = JSON.parse(event.data); } catch { /* plain text data */ }
        this.onEvent(event.type, data, event.id);
        if (this.stopWhen(event.type, data)) finished = true;
      },
    });
    // A silent connection (no data, no heartbeat) for too long is a dead one: start over.
    let idle = null;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => this.controller?.abort(), this.idleTimeout);
    };
    arm();
    try {
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        parser.feed(decoder.decode(value, { stream: true }));
      }
    } finally {
      clearTimeout(idle);
      if (finished) {
        this.stopped = true;
        reader.cancel().catch(() => {});
        this.onState('closed');
      }
    }
  }
}

/** The human message of an API error body, whatever its exact shape. */
export function errorMessage(body) {
  if (!body || typeof body !== 'object') return '';
  const e = body.error ?? body.detail ?? body.message;
  if (typeof e === 'string') return e;
  if (Array.isArray(e)) return e.map((d) => d.msg || JSON.stringify(d)).join('; ');
  if (e && typeof e === 'object') return e.message || e.detail || JSON.stringify(e);
  return '';
}
