// Shared pieces of the town-hall pages: dates in the reader's time zone, socket acks as promises, the
// connection line, and a question's text with its author.
import { ApiError, h, t } from './common.js';

const ACK_TIMEOUT_MS = 10000;
const lang = () => document.documentElement.lang || undefined;

/** Epoch seconds as a date and time in the browser's time zone and the page's language. */
export function when(seconds, { date = true } = {}) {
  const options = date ? { dateStyle: 'full', timeStyle: 'short' } : { timeStyle: 'short' };
  return new Date(seconds * 1000).toLocaleString(lang(), options);
}

/** "Monday, 3 December 2026, 18:00 to 19:30" (the end without its date on the same day). */
export function span(start, end) {
  const sameDay = new Date(start * 1000).toDateString() === new Date(end * 1000).toDateString();
  return t('th.span', { start: when(start), end: when(end, { date: !sameDay }) });
}

/** Fill every `<time data-epoch>` below `root` (the server renders no dates: it does not know the zone). */
export function fillTimes(root = document) {
  for (const element of root.querySelectorAll('time[data-epoch]')) {
    const start = Number(element.dataset.epoch);
    element.dateTime = new Date(start * 1000).toISOString();
    element.textContent = element.dataset.end ? span(start, Number(element.dataset.end)) : when(start);
  }
}

/** Emit with an acknowledgement: resolves to the ack, rejects with an ApiError for `{error}` or no answer. */
export function emit(socket, event, payload) {
  return new Promise((resolve, reject) => {
    if (!socket?.connected) {
      reject(new ApiError('network', t('err.network')));
      return;
    }
    socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (err, ack) => {
      if (err) reject(new ApiError('network', t('err.network')));
      else if (ack?.error) reject(new ApiError(ack.error.code || 'generic', ack.error.message));
      else resolve(ack || {});
    });
  });
}

/** Keep a `.connection` line up to date; hidden while connected. */
export function connectionLine(element) {
  return (state) => {
    element.dataset.state = state;
    element.textContent = { connecting: t('connecting'), connected: t('connected'), reconnecting: t('th.reconnecting') }[state];
    element.hidden = state === 'connected';
  };
}

/** A question's text and its author ("anonymous" for an empty name). */
export function questionBody(q, { tag = 'p', cls = 'th-q__text' } = {}) {
  return [
    h(tag, { class: cls }, q.text),
    h('p', { class: 'th-q__by muted' }, t('th.by', { name: q.author_name || t('th.anonymous') })),
  ];
}

/** Sort a public list (`votes`: the server's order, most votes first; `time`: oldest first). */
export function sorted(questions, order) {
  if (order !== 'time') return questions;
  return [...questions].sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : 1));
}
