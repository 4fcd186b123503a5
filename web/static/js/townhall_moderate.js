// /townhall/{event}/moderate: the moderators' page. The staff socket (cookie) watches the event; every
// moderator's action comes back to all of them as `th_moderation` / `th_staff_event`, so several can work
// at once. Items that did not change keep their DOM (an edit in progress or the focus survive updates).
import { errorMessage, h, pageData, reconnectAfterStop, request, t, tn } from './common.js';
import { createStaffStage } from './stage.js';
import { connectionLine, emit, fillTimes, when } from './townhall_common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
const setConnection = connectionLine($('connection'));
const ORDER = ['pending', 'answering', 'published', 'answered', 'dismissed', 'merged'];
const PUBLIC = new Set(['published', 'answering', 'answered']);

let event = data.event;
let moderation = [];
let socket = null;
let video = null; // the moderator's own camera on the stage (createStaffStage)
let youtubeLoaded = false;
const rendered = new Map(); // question id -> {signature, element}

function showError(error) {
  const box = $('action-error');
  box.textContent = error ? errorMessage(error) : '';
  box.hidden = !error;
  if (error) box.focus();
}

function status(text) {
  $('action-status').textContent = text;
}

// -- the event ----------------------------------------------------------------------------------------

function renderEvent() {
  const badge = $('event-state');
  badge.textContent = t(`th.state.${event.state}`);
  badge.className = `badge ${event.state === 'live' ? 'badge--open' : event.state === 'ended' ? 'badge--closed' : 'badge--info'}`;
  $('event-start').hidden = event.state !== 'scheduled';
  $('event-end').hidden = event.state !== 'live';
  $('moderators').textContent = event.moderators?.length ? t('th.mod.moderators', { names: event.moderators.join(', ') }) : '';
  // After the event: publish the composed recording (once; `no_recording` while it is being composed).
  $('recording-publish').hidden = !(event.state === 'ended' && event.recorded && !event.published);
  $('recording-box').hidden = !event.published;
  if (event.published) {
    $('recording-published').textContent = t('th.mod.published');
    loadYoutube();
  }
  video?.update(event);
  renderHands();
  renderStage();
}

async function publishRecording() {
  const button = $('recording-publish');
  showError(null);
  button.disabled = true;
  try {
    const ack = await emit(socket, 'th_publish', { event: event.id, published: true });
    event = { ...event, ...ack.event, hands: event.hands, moderators: event.moderators };
    renderEvent();
    status(t('th.mod.published'));
  } catch (error) {
    showError(error.code === 'no_recording' ? { message: t('th.mod.publish_not_ready') } : error);
  } finally {
    button.disabled = false;
  }
}
$('recording-publish').addEventListener('click', publishRecording);

// The chapters as a YouTube description block, to paste when the recording is also put there.
async function loadYoutube() {
  if (youtubeLoaded) return;
  youtubeLoaded = true;
  try {
    const { body } = await request('GET', `/api/townhall/events/${encodeURIComponent(event.id)}/recording`);
    $('youtube').hidden = false;
    $('youtube-text').hidden = !body.youtube;
    $('youtube-copy').hidden = !body.youtube;
    $('youtube-text').value = body.youtube || '';
    $('youtube-status').textContent = body.youtube ? '' : t('th.mod.youtube_none');
  } catch {
    youtubeLoaded = false; // not there (yet): try again with the next update
  }
}

$('youtube-copy').addEventListener('click', async () => {
  const text = $('youtube-text');
  try {
    await navigator.clipboard.writeText(text.value);
  } catch {
    text.select(); // no clipboard access: selected, ready for Ctrl+C
    return;
  }
  $('youtube-status').textContent = t('th.mod.copied');
});

function renderHands() {
  const hands = Array.isArray(event.hands) ? event.hands : [];
  $('hands').replaceChildren(
    ...(hands.length
      ? hands.map((hand, i) => h(
          'li',
          { class: 'th-person', dataset: { audience: hand.audience } },
          h('span', { id: `hand-${i}` }, t('th.mod.hand', { n: i + 1, time: when(hand.raised_at, { date: false }) })),
          h('button', { type: 'button', class: 'button', 'aria-describedby': `hand-${i}`, dataset: { invite: hand.audience } }, t('th.mod.invite')),
        ))
      : [h('li', { class: 'muted' }, t('th.mod.hands_none'))]),
  );
}

function renderStage() {
  $('stage').replaceChildren(
    ...(event.stage.length
      ? event.stage.map((guest, i) => h(
          'li',
          { class: 'th-person', dataset: { audience: guest.audience } },
          h('span', { id: `guest-${i}` }, `${t('th.mod.guest', { n: i + 1 })}: ${t(`th.mod.guest.${guest.state}`)}`),
          h('button', { type: 'button', class: 'button button--danger', 'aria-describedby': `guest-${i}`, dataset: { stageEnd: guest.audience } }, t('th.mod.stage_end')),
        ))
      : [h('li', { class: 'muted' }, t('th.mod.stage_none'))]),
  );
}

$('event-start').addEventListener('click', () => act('th_start', { event: event.id }, t('th.mod.start')));
$('event-end').addEventListener('click', () => {
  if (window.confirm(t('th.mod.end_confirm'))) act('th_end', { event: event.id }, t('th.mod.end'));
});
$('hands').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-invite]');
  if (button) act('th_invite', { event: event.id, audience: button.dataset.invite }, t('th.mod.invite'), button);
});
$('stage').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-stage-end]');
  if (button) act('th_stage_end', { event: event.id, audience: button.dataset.stageEnd }, t('th.mod.stage_end'), button);
});

// -- the questions ------------------------------------------------------------------------------------

function actionsFor(q) {
  const live = event.state === 'live';
  const ended = event.state === 'ended';
  switch (q.state) {
    case 'pending':
      return ended ? ['dismiss'] : ['approve', 'dismiss'];
    case 'published':
      return [event.pinned === q.id ? 'unpin' : 'pin', ...(live ? ['answering'] : []), 'dismiss'];
    case 'answering':
      return ['answered', 'back'];
    case 'answered':
      return live ? ['answering'] : [];
    case 'dismissed':
      return ended ? [] : ['approve'];
    default:
      return [];
  }
}

function mergeTargets(q) {
  if (q.state !== 'pending' && q.state !== 'published') return [];
  return moderation.filter((other) => other.id !== q.id && PUBLIC.has(other.state));
}

function short(text, n = 70) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

function signature(q) {
  return JSON.stringify([q.state, q.votes, q.text, q.author_name, q.edited, q.merged_into, event.pinned === q.id,
    event.state, mergeTargets(q).map((o) => [o.id, o.text])]);
}

function build(q) {
  const base = `mq-${q.id}`;
  const byId = new Map(moderation.map((o) => [o.id, o]));
  const flags = [
    h('span', { class: `badge th-mstate th-mstate--${q.state}` }, t(`th.mstate.${q.state}`)),
    h('span', { class: 'th-q__votes' }, tn('th.votes', q.votes)),
    event.pinned === q.id ? h('span', { class: 'badge badge--info' }, t('th.badge.pinned')) : null,
    q.live ? h('span', { class: 'badge badge--warn' }, t('th.badge.live')) : null,
    q.edited ? h('span', { class: 'badge badge--closed' }, t('th.mod.edited')) : null,
  ];
  const editable = q.state === 'pending' || q.state === 'dismissed';
  const text = editable
    ? h('div', { class: 'field th-mq__edit' },
        h('label', { for: `${base}-edit` }, t('th.mod.edit')),
        h('textarea', { id: `${base}-edit`, rows: 3, maxlength: 500, dataset: { original: q.text } }, q.text))
    : h('p', { class: 'th-q__text', id: `${base}-text` }, q.text);
  const describedBy = editable ? `${base}-by` : `${base}-text`;
  const targets = mergeTargets(q);
  return h(
    'li',
    { class: `th-mq th-mq--${q.state}`, dataset: { question: q.id } },
    h('div', { class: 'th-q__badges' }, flags),
    text,
    h('p', { class: 'th-q__by muted', id: `${base}-by` },
      t('th.by', { name: q.author_name || t('th.anonymous') }), ' · ', when(q.created_at, { date: false }),
      q.merged_into ? ` · ${t('th.mod.merged_into', { text: short(byId.get(q.merged_into)?.text || '…') })}` : ''),
    h('div', { class: 'th-mq__actions' },
      actionsFor(q).map((action) => h('button', {
        type: 'button',
        class: `button${action === 'dismiss' ? ' button--quiet' : action === 'approve' || action === 'answering' ? ' button--primary' : ''}`,
        'aria-describedby': describedBy,
        dataset: { action },
      }, t(`th.mod.${action}`)))),
    targets.length
      ? h('div', { class: 'inline-field th-mq__merge' },
          h('label', { for: `${base}-merge` }, t('th.mod.merge_into')),
          h('select', { id: `${base}-merge` },
            h('option', { value: '' }, t('th.mod.merge_choose')),
            targets.map((o) => h('option', { value: o.id }, short(o.text)))),
          h('button', { type: 'button', class: 'button', 'aria-describedby': describedBy, dataset: { action: 'merge' } }, t('th.mod.merge')))
      : null,
  );
}

function renderModeration() {
  const list = $('moderation');
  const items = [...moderation].sort((a, b) => ORDER.indexOf(a.state) - ORDER.indexOf(b.state));
  const active = document.activeElement;
  const focusKey = list.contains(active)
    ? { question: active.closest('[data-question]')?.dataset.question, action: active.dataset.action, id: active.id }
    : null;
  const seen = new Set();
  const elements = items.map((q) => {
    seen.add(q.id);
    const sig = signature(q);
    const old = rendered.get(q.id);
    if (old && old.signature === sig) return old.element;
    const element = build(q);
    // An edit in progress survives a change made by someone else (a vote, another moderator).
    const oldEdit = old?.element.querySelector('textarea');
    const newEdit = element.querySelector('textarea');
    if (oldEdit && newEdit && oldEdit.value !== oldEdit.dataset.original) newEdit.value = oldEdit.value;
    rendered.set(q.id, { signature: sig, element });
    return element;
  });
  for (const id of [...rendered.keys()]) if (!seen.has(id)) rendered.delete(id);
  list.replaceChildren(...elements);
  if (!elements.length) list.append(h('li', { class: 'muted' }, t('th.mod.none')));
  if (focusKey?.question && !list.contains(document.activeElement)) {
    const item = list.querySelector(`[data-question="${CSS.escape(focusKey.question)}"]`);
    const target = (focusKey.id && document.getElementById(focusKey.id))
      || item?.querySelector(`[data-action="${focusKey.action}"]`) || item?.querySelector('button');
    target?.focus();
  }
  const pending = moderation.filter((q) => q.state === 'pending').length;
  const text = pending ? tn('th.mod.pending', pending) : '';
  if ($('pending-count').textContent !== text) $('pending-count').textContent = text;
}

$('moderation').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-action]');
  if (!button) return;
  const item = button.closest('[data-question]');
  const question = item.dataset.question;
  const action = button.dataset.action;
  const payload = { event: event.id, action, question };
  if (action === 'approve') {
    const edit = item.querySelector('textarea');
    const text = edit ? edit.value.trim().replace(/\s+/g, ' ') : '';
    if (edit && text && text !== edit.dataset.original) payload.text = text;
  } else if (action === 'merge') {
    const select = item.querySelector('select');
    if (!select.value) {
      select.focus();
      return;
    }
    payload.into = select.value;
  } else if (action === 'unpin') {
    delete payload.question;
  }
  act('th_moderate', payload, t(`th.mod.${action}`), button);
});

async function act(name, payload, label, button = null) {
  showError(null);
  if (button) button.disabled = true;
  try {
    const ack = await emit(socket, name, payload);
    if (ack.event) {
      event = { ...event, ...ack.event, hands: event.hands, moderators: event.moderators };
      renderEvent();
      renderModeration();
    }
    status(t('th.mod.done', { action: label }));
  } catch (error) {
    showError(error);
  } finally {
    if (button?.isConnected) button.disabled = false;
  }
}

// -- the socket ---------------------------------------------------------------------------------------

function connect() {
  socket = window.io({ reconnectionDelayMax: 10000 });
  reconnectAfterStop(socket);
  video = createStaffStage(socket, event.id, {
    button: $('camera'), status: $('video-status'), container: $('stage-video'), soundButton: $('sound-on'), hint: $('video-hint'), panel: $('video-panel'), errorMessage,
  });
  socket.on('connect', async () => {
    setConnection('connected');
    try {
      const ack = await emit(socket, 'th_watch', { event: event.id });
      event = ack.event;
      moderation = ack.moderation || [];
      renderEvent();
      renderModeration();
      video.reconnected();
    } catch (error) {
      showError(error);
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
    renderEvent();
    renderModeration();
  });
  socket.on('th_moderation', (update) => {
    if (update.event !== event.id) return;
    moderation = update.questions;
    renderModeration();
  });
}

fillTimes();
setConnection('connecting');
renderEvent();
connect();
