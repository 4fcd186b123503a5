// /staff/recordings: the recordings a lead (of the department) or the recording clerk may see; play
// (range requests: the player seeks), download, the consent record, export, delete, and the access log.
import { errorMessage, h, pageData, request, t } from './common.js';

const $ = (id) => document.getElementById(id);
const data = pageData();
let csrf = null;

const when = (seconds) => new Date(seconds * 1000).toLocaleString(document.documentElement.lang || undefined, {
  dateStyle: 'medium',
  timeStyle: 'short',
});

function duration(seconds) {
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function status(text) {
  $('recordings-status').textContent = text;
}

function showError(error) {
  const box = $('recordings-error');
  box.textContent = errorMessage(error);
  box.hidden = false;
  box.focus();
}

function roles(recording) {
  return recording.participants.map((p) => t(`recs.role.${p.role}`)).join(', ');
}

function stateText(recording) {
  if (recording.state !== 'stopped') return t('recs.live');
  return t(`recs.composition.${recording.composition}`);
}

function row(recording) {
  const ready = recording.composition === 'done';
  const media = `/api/staff/recordings/${encodeURIComponent(recording.id)}/media`;
  const label = `${recording.department_name}, ${when(recording.created_at)}`;
  const play = h('button', { type: 'button', class: 'button', disabled: !ready, 'aria-label': `${t('recs.play')}: ${label}` }, t('recs.play'));
  play.addEventListener('click', () => openPlayer(recording, label));
  const consent = h('button', { type: 'button', class: 'button button--quiet', 'aria-label': `${t('recs.consent')}: ${label}` }, t('recs.consent'));
  consent.addEventListener('click', () => openPlayer(recording, label, { play: false }));
  const remove = h('button', { type: 'button', class: 'button button--danger', 'aria-label': `${t('recs.delete')}: ${label}` }, t('recs.delete'));
  remove.addEventListener('click', () => removeRecording(recording));
  return h(
    'tr',
    { dataset: { recording: recording.id } },
    h('td', {}, when(recording.created_at), h('br'), h('small', { class: 'muted' }, t('recs.expires', { date: when(recording.expires_at) }))),
    h('td', {}, recording.department_name),
    h('td', {}, ready ? duration(recording.duration) : duration(recording.recorded_seconds)),
    h('td', {}, roles(recording)),
    h('td', {}, stateText(recording)),
    h(
      'td',
      { class: 'recordings__actions' },
      play,
      ready ? h('a', { class: 'button', href: `${media}?download=1`, 'aria-label': `${t('recs.download')}: ${label}` }, t('recs.download')) : null,
      consent,
      h('a', { class: 'button button--quiet', href: `/api/staff/recordings/${encodeURIComponent(recording.id)}/consent`, 'aria-label': `${t('recs.export')}: ${label}` }, t('recs.export')),
      remove,
    ),
  );
}

function table(head, rows) {
  return h('table', { class: 'table' }, h('thead', {}, h('tr', {}, head.map((k) => h('th', { scope: 'col' }, t(k))))), h('tbody', {}, rows));
}

async function load() {
  let body;
  try {
    ({ body } = await request('GET', '/api/staff/recordings'));
  } catch (error) {
    showError(error);
    return;
  }
  const list = $('recordings-list');
  list.replaceChildren(
    body.recordings.length
      ? table(['recs.date', 'recs.department', 'recs.duration', 'recs.participants', 'recs.state', 'recs.actions'], body.recordings.map(row))
      : h('p', { class: 'muted' }, t('recs.none')),
  );
  $('access-log-panel').hidden = !body.can_read_access_log;
  if (body.can_read_access_log) await loadLog();
}

async function loadLog() {
  let body;
  try {
    ({ body } = await request('GET', '/api/staff/recordings/access-log'));
  } catch (error) {
    showError(error);
    return;
  }
  const names = data.departments || {};
  $('access-log').replaceChildren(
    body.entries.length
      ? table(
          ['recs.log.when', 'recs.log.who', 'recs.log.action', 'recs.department', 'recs.log.recording'],
          body.entries.map((e) => h('tr', {}, h('td', {}, when(e.at)), h('td', {}, e.actor), h('td', {}, t(`recs.log.${e.action}`)), h('td', {}, names[e.department] || e.department), h('td', {}, h('code', {}, e.recording.slice(0, 8))))),
        )
      : h('p', { class: 'muted' }, t('recs.log_empty')),
  );
}

async function openPlayer(recording, label, { play = true } = {}) {
  const panel = $('player-panel');
  panel.hidden = false;
  $('player-heading').textContent = play ? `${t('recs.player')}: ${label}` : `${t('recs.consent')}: ${label}`;
  const player = $('player');
  player.hidden = !play;
  if (play) {
    player.src = `/api/staff/recordings/${encodeURIComponent(recording.id)}/media`;
    // "Abspielen" plays (the click allows sound); a refused play leaves the player's own controls.
    player.play().catch(() => {});
    // The server logged this view when the player asked for the file: show it in the access log.
    player.addEventListener('loadedmetadata', () => {
      if (!$('access-log-panel').hidden) loadLog();
    }, { once: true });
  } else {
    player.removeAttribute('src');
    player.load();
  }
  try {
    const { body } = await request('GET', `/api/staff/recordings/${encodeURIComponent(recording.id)}`);
    const consent = body.consent;
    $('consent-record').replaceChildren(
      h('h3', {}, t('recs.consent')),
      table(
        ['recs.log.when', 'recs.participants', 'recs.log.action'],
        consent.consents.map((c) => h('tr', {}, h('td', {}, when(c.at)), h('td', {}, `${t(`recs.role.${c.role}`)} (${c.participant})`), h('td', {}, t(`recs.action.${c.action}`), c.text_sha256 ? h('small', { class: 'muted' }, ` ${c.text_version} · SHA-256 ${c.text_sha256.slice(0, 12)}…`) : null))),
      ),
    );
  } catch (error) {
    showError(error);
  }
  $('player-heading').focus();
}

async function removeRecording(recording) {
  if (!window.confirm(t('recs.delete_confirm'))) return;
  try {
    await request('DELETE', `/api/staff/recordings/${encodeURIComponent(recording.id)}`, { csrf });
  } catch (error) {
    showError(error);
    return;
  }
  $('player-panel').hidden = true;
  status(t('recs.deleted'));
  await load();
}

async function start() {
  try {
    const { body } = await request('GET', '/api/session');
    csrf = body.csrf;
  } catch {
    window.location.assign('/staff');
    return;
  }
  await load();
}

start();
