// /townhall/{event}/presenter: for the politician on stage. The question being answered in large type,
// the next ones (the pinned one first, then by votes) and the raised hands; nothing to click.
import { errorMessage, h, pageData, t, tn } from './common.js';
import { createStaffStage } from './stage.js';
import { connectionLine, emit, questionBody, when } from './townhall_common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const setConnection = connectionLine($('connection'));
const NEXT = 5;

let event = data.event;
let questions = [];

function render() {
  const badge = $('event-state');
  badge.textContent = t(`th.state.${event.state}`);
  badge.className = `badge ${event.state === 'live' ? 'badge--open' : event.state === 'ended' ? 'badge--closed' : 'badge--info'}`;

  const now = event.answering ? questions.find((q) => q.id === event.answering) : null;
  const box = $('now');
  const key = now ? `${now.id}:${now.text}` : '-';
  if (box.dataset.key !== key) {
    box.dataset.key = key;
    box.replaceChildren(...(now
      ? questionBody(now, { cls: 'th-presenter__question' })
      : [h('p', { class: 'muted th-presenter__nothing' }, t('th.presenter.nothing'))]));
  }

  const pinned = event.pinned ? questions.find((q) => q.id === event.pinned) : null;
  const rest = questions.filter((q) => q.state === 'published' && q.id !== event.pinned); // already by votes
  const next = [...(pinned ? [pinned] : []), ...rest].slice(0, NEXT);
  $('next').replaceChildren(...(next.length
    ? next.map((q) => h('li', { class: `th-next__item${q.id === event.pinned ? ' th-next__item--pinned' : ''}` },
        q.id === event.pinned ? h('span', { class: 'badge badge--info' }, t('th.badge.pinned')) : null,
        h('p', { class: 'th-next__text' }, q.text),
        h('p', { class: 'muted' }, `${tn('th.votes', q.votes)} · ${t('th.by', { name: q.author_name || t('th.anonymous') })}`)))
    : [h('li', { class: 'muted' }, t('th.presenter.next_none'))]));

  video.update(event);
  const hands = Array.isArray(event.hands) ? event.hands : [];
  const count = tn('th.presenter.hands', hands.length);
  if ($('hands-count').textContent !== count) $('hands-count').textContent = count;
  $('hands').replaceChildren(...hands.map((hand, i) => h('li', {}, t('th.mod.hand', { n: i + 1, time: when(hand.raised_at, { date: false }) }))));
}

function fail(error) {
  const box = $('presenter-error');
  box.textContent = errorMessage(error);
  box.hidden = false;
}

const socket = window.io({ reconnectionDelayMax: 10000 });
// The politician's own camera on the stage, and the others on it (a moderator, a guest from the audience).
const video = createStaffStage(socket, event.id, {
  button: $('camera'), status: $('video-status'), container: $('stage-video'), soundButton: $('sound-on'), hint: $('video-hint'), panel: $('video-panel'), errorMessage,
});
socket.on('connect', async () => {
  setConnection('connected');
  try {
    const ack = await emit(socket, 'th_watch', { event: event.id });
    event = ack.event;
    questions = ack.questions;
    $('presenter-error').hidden = true;
    render();
    video.reconnected();
  } catch (error) {
    fail(error);
  }
});
socket.on('disconnect', (reason) => {
  video.disconnected();
  if (reason !== 'io client disconnect') setConnection('reconnecting');
});
socket.on('connect_error', (error) => {
  if (error?.message === 'unauthenticated') {
    window.location.assign('/staff');
    return;
  }
  setConnection('reconnecting');
  if (!socket.active) setTimeout(() => socket.connect(), 5000);
});
socket.on('th_staff_event', (next) => {
  if (next.id !== event.id) return;
  event = next;
  render();
});
socket.on('th_questions', (update) => {
  if (update.event !== event.id) return;
  questions = update.questions;
  render();
});

setConnection('connecting');
render();
