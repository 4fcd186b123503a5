// /townhall/{event}: the audience's page. Joins the event's audience (a token kept per event in
// localStorage), sends questions (their link is kept too), lists the published questions with votes,
// and, live, the raised hand, the question being answered, the invitation on stage and the stage's video
// (a viewer; a publisher while on stage). Afterwards: the published recording with its chapter menu.
import { errorMessage, h, pageData, reconnectAfterStop, request, t, tn } from './common.js';
import { openLocalMedia, play, stopStream } from './media.js';
import { StageConnection, createStageView, stageProblem } from './stage.js';
import { connectionLine, emit, fillTimes, questionBody, sorted, when } from './townhall_common.js';

const data = pageData();
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = `sps_th_${data.event.id}`;
const MINE_KEY = 'sps_th_questions';

let event = data.event;
let token = null;
let audienceId = null;
let myVotes = new Set();
let questions = [];
let order = 'votes';
let socket = null;
let handRaised = false;
let published = null; // how many public questions the last list had (announce new ones)
let stage = null; // the stage connection (StageConnection), once the socket exists
let stageView = null;
let camera = null; // own camera and microphone while on stage
let guestTurn = false; // accepted an invitation and not yet sent off: publish
let checking = false; // the camera check of an accepted invitation is running
let stageSync = Promise.resolve();
let reoffer = false;
const CHECK_PICTURE_MS = 6000;
const setConnection = connectionLine($('connection'));

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback; // storage disabled or garbled
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, typeof value === 'string' ? value : JSON.stringify(value));
  } catch {
    /* storage disabled: the page still works, it just forgets */
  }
}

function keptToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function announce(text) {
  const status = $('questions-status');
  status.textContent = '';
  // A fresh text node in a live region: the same sentence twice is announced twice.
  requestAnimationFrame(() => {
    status.textContent = text;
  });
}

// -- the event's state --------------------------------------------------------------------------------

function questionsOpen() {
  if (event.state === 'live') return true;
  if (event.state !== 'scheduled' || !event.advance_questions) return false;
  const deadline = event.questions_until ?? event.starts_at;
  return Date.now() / 1000 <= deadline;
}

function myStage() {
  return event.stage.find((guest) => guest.audience === audienceId) || null;
}

function renderEvent() {
  const badge = $('event-state');
  badge.textContent = t(`th.state.${event.state}`);
  badge.className = `badge ${event.state === 'live' ? 'badge--open' : event.state === 'ended' ? 'badge--closed' : 'badge--info'}`;
  const status = $('event-status');
  let text = '';
  if (event.state === 'ended') text = t('th.ended');
  else if (event.state === 'scheduled') {
    text = event.advance_questions && questionsOpen() && event.questions_until
      ? `${t('th.not_started')} ${t('th.until', { date: when(event.questions_until) })}`
      : t('th.not_started');
  }
  if (status.textContent !== text) status.textContent = text;
  status.hidden = !text;

  const live = event.state === 'live';
  $('live-section').hidden = !live;
  const open = questionsOpen();
  $('ask-section').hidden = !open;
  $('ask-closed').hidden = open;

  const guest = live ? myStage() : null;
  if (!live || guest) handRaised = false;
  const hand = $('hand');
  hand.hidden = Boolean(guest);
  hand.setAttribute('aria-pressed', String(handRaised));
  $('stage-box').hidden = guest?.state !== 'on_stage';
  const dialog = $('invite-dialog');
  if (guest?.state === 'invited' && !dialog.open && !guestTurn && !checking) openInvite();
  if (guest?.state !== 'invited' && dialog.open && !checking) dialog.close();
  if (guestTurn && live && !guest) endTurn(); // the moderator ended the turn (th_stage_ended may follow)
  renderNow();
  renderRecording();
  syncStage();
}

function renderNow() {
  const box = $('now-answering');
  const q = event.answering ? questions.find((item) => item.id === event.answering) : null;
  const key = q ? `${q.id}:${q.text}` : '';
  if (box.dataset.key === key) return; // speak only when it changes
  box.dataset.key = key;
  box.replaceChildren(...(q ? [h('h3', { class: 'th-now__label' }, t('th.now')), ...questionBody(q, { cls: 'th-now__text' })] : []));
}

// -- the question list --------------------------------------------------------------------------------

function badges(q) {
  const list = [];
  if (q.state === 'answering') list.push(h('span', { class: 'badge badge--open' }, t('th.badge.answering')));
  if (q.state === 'answered') list.push(h('span', { class: 'badge badge--closed' }, t('th.badge.answered')));
  if (event.pinned === q.id) list.push(h('span', { class: 'badge badge--info' }, t('th.badge.pinned')));
  if (q.live) list.push(h('span', { class: 'badge badge--warn' }, t('th.badge.live')));
  return list;
}

function item(q) {
  const votable = event.state !== 'ended' && (q.state === 'published' || q.state === 'answering');
  const pressed = myVotes.has(q.id);
  const base = `q-${q.id}`;
  return h(
    'li',
    { class: `th-q th-q--${q.state}`, dataset: { question: q.id } },
    h('div', { class: 'th-q__badges' }, badges(q)),
    h('div', { class: 'th-q__main', id: `${base}-text` }, questionBody(q)),
    h(
      'div',
      { class: 'th-q__vote' },
      h('span', { class: 'th-q__votes', id: `${base}-votes`, dataset: { field: 'votes' } }, tn('th.votes', q.votes)),
      votable
        ? h('button', {
            type: 'button',
            class: `button th-vote${pressed ? ' th-vote--on' : ''}`,
            'aria-pressed': String(pressed),
            'aria-describedby': `${base}-text ${base}-votes`,
            dataset: { vote: q.id },
          }, t('th.vote'))
        : null,
    ),
  );
}

function renderQuestions() {
  const list = $('questions');
  const focused = list.contains(document.activeElement) ? document.activeElement.dataset.vote : null;
  const shown = sorted(questions, order);
  list.replaceChildren(...shown.map(item));
  if (!shown.length) list.append(h('li', { class: 'muted th-q--none' }, t('th.none')));
  if (focused) list.querySelector(`[data-vote="${CSS.escape(focused)}"]`)?.focus();
  const count = tn('th.count', shown.length);
  if ($('questions-count').textContent !== count) $('questions-count').textContent = count;
  if (published !== null && shown.length > published) announce(t('th.new_question'));
  published = shown.length;
  renderNow();
}

$('questions').addEventListener('click', async (e) => {
  const button = e.target.closest('button[data-vote]');
  if (!button || button.disabled) return;
  const id = button.dataset.vote;
  const voting = !myVotes.has(id);
  button.disabled = true;
  try {
    await emit(socket, voting ? 'th_vote' : 'th_unvote', { question: id });
    if (voting) myVotes.add(id);
    else myVotes.delete(id);
    announce(voting ? t('th.voted') : t('th.unvoted'));
  } catch (error) {
    if (error.code === 'already_voted') myVotes.add(id);
    else if (error.code === 'not_voted') myVotes.delete(id);
    else announce(errorMessage(error));
  } finally {
    button.disabled = false;
    button.setAttribute('aria-pressed', String(myVotes.has(id)));
    button.classList.toggle('th-vote--on', myVotes.has(id));
  }
});

for (const radio of document.querySelectorAll('input[name="order"]')) {
  radio.addEventListener('change', () => {
    order = radio.value;
    renderQuestions();
  });
}

// -- own questions ------------------------------------------------------------------------------------

function renderMine() {
  const mine = load(MINE_KEY, []).filter((q) => q.event === event.id);
  $('mine-section').hidden = !mine.length;
  $('mine').replaceChildren(
    ...mine.map((q) => h('li', {}, h('a', { href: q.link }, q.text.length > 80 ? `${q.text.slice(0, 79)}…` : q.text), ' ', h('small', { class: 'muted' }, when(q.at)))),
  );
}

function askError(text, field) {
  const box = $('ask-error');
  box.textContent = text;
  box.hidden = !text;
  $('question-text').toggleAttribute('aria-invalid', Boolean(field));
  if (field) $('question-text').setAttribute('aria-invalid', 'true');
  if (text) (field || box).focus();
}

function updateCounter() {
  const counter = $('question-count');
  const left = Number(counter.dataset.max) - $('question-text').value.length;
  counter.textContent = left <= 100 ? t('chars_left', { n: left }) : '';
}
$('question-text').addEventListener('input', updateCounter);

$('ask-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = $('question-text').value.trim();
  if (!text) {
    askError(t('th.empty'), $('question-text'));
    return;
  }
  askError('');
  const button = e.submitter || $('ask-form').querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    if (!token) await join();
    const { body } = await request('POST', `/api/townhall/events/${encodeURIComponent(event.id)}/questions`, {
      token,
      body: { text, name: $('question-name').value.trim() },
    });
    const link = body.question.link;
    save(MINE_KEY, [...load(MINE_KEY, []), { id: body.question.id, event: event.id, text, link, at: Date.now() / 1000 }].slice(-50));
    const anchor = $('ask-link');
    anchor.href = link;
    anchor.textContent = new URL(link, window.location.href).href;
    $('ask-form').hidden = true;
    $('ask-done').hidden = false;
    $('ask-done').focus();
    $('question-text').value = '';
    updateCounter();
    renderMine();
  } catch (error) {
    askError(errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

$('ask-another').addEventListener('click', () => {
  $('ask-done').hidden = true;
  $('ask-form').hidden = false;
  $('question-text').focus();
});

// -- hand and stage -----------------------------------------------------------------------------------

$('hand').addEventListener('click', async () => {
  const raise = !handRaised;
  try {
    await emit(socket, 'th_hand', { raised: raise });
    handRaised = raise;
    $('hand').setAttribute('aria-pressed', String(raise));
    announce(raise ? t('th.hand_raised') : t('th.hand_lowered'));
  } catch (error) {
    announce(errorMessage(error));
  }
});

function openInvite() {
  const dialog = $('invite-dialog');
  $('invite-error').hidden = true;
  const consent = $('invite-consent');
  if (consent) consent.checked = false;
  if (!dialog.open) dialog.showModal();
  $('invite-heading').focus();
}

// Escape is no answer: declining must be a choice, as easy as accepting (both are buttons).
$('invite-dialog').addEventListener('cancel', (e) => e.preventDefault());

async function answerInvite(accept) {
  const box = $('invite-error');
  box.hidden = true;
  if (checking) return;
  let local = null;
  try {
    if (accept) {
      local = await cameraCheck();
      if (!local) return;
      await emit(socket, 'th_stage_accept', { publication_consent: Boolean($('invite-consent')?.checked) });
    } else {
      await emit(socket, 'th_stage_leave', {});
    }
    endCheck();
    $('invite-dialog').close();
    if (!accept) announce(t('th.stage_declined'));
  } catch (error) {
    stopStream(local?.stream);
    local = null;
    endCheck();
    if (error.code === 'not_invited' || error.code === 'event_not_live') {
      $('invite-dialog').close(); // nothing left to answer: say why outside the dialog
      announce(errorMessage(error));
      return;
    }
    box.textContent = errorMessage(error);
    box.hidden = false;
    return;
  }
  if (local) {
    camera = local.stream;
    guestTurn = true;
    stageView?.setSelf(camera);
    syncStage();
  }
}

/** Before going on stage: camera and microphone open and the camera shows a picture. Resolves to what
 * openLocalMedia gave, or null after saying what is wrong (the invitation stays open: try again or decline). */
async function cameraCheck() {
  checking = true;
  for (const id of ['invite-accept', 'invite-decline']) $(id).disabled = true;
  const status = $('invite-check-status');
  const preview = $('invite-preview');
  $('invite-check').hidden = false;
  status.textContent = t('th.check.running');
  let local;
  try {
    local = await openLocalMedia('full');
  } catch (error) {
    failCheck(t(`media.problem.${error.code}`));
    return null;
  }
  const video = local.stream.getVideoTracks()[0];
  if (video) {
    preview.srcObject = new MediaStream([video]);
    play(preview);
    if (!(await firstPicture(preview))) {
      stopStream(local.stream);
      failCheck(t('th.check.no_picture'));
      return null;
    }
    preview.closest('.tile').classList.remove('tile--off');
  } else {
    $('invite-preview-text').textContent = t('media.no_camera');
  }
  status.textContent = local.missing === 'camera' ? t('media.problem.no_camera_fallback') : t('th.check.ok');
  return local;
}

function firstPicture(video) {
  if (video.videoWidth > 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), CHECK_PICTURE_MS);
    video.addEventListener('resize', () => {
      clearTimeout(timer);
      resolve(video.videoWidth > 0);
    }, { once: true });
  });
}

function failCheck(text) {
  endCheck();
  const box = $('invite-error');
  box.textContent = text;
  box.hidden = false;
}

function endCheck() {
  checking = false;
  for (const id of ['invite-accept', 'invite-decline']) $(id).disabled = false;
  const preview = $('invite-preview');
  preview.srcObject = null;
  preview.closest('.tile').classList.add('tile--off');
  $('invite-preview-text').textContent = '';
  $('invite-check-status').textContent = '';
  $('invite-check').hidden = true;
}
$('invite-accept').addEventListener('click', () => answerInvite(true));
$('invite-decline').addEventListener('click', () => answerInvite(false));

$('stage-leave').addEventListener('click', async () => {
  try {
    await emit(socket, 'th_stage_leave', {});
  } catch (error) {
    if (error.code !== 'not_invited') {
      announce(errorMessage(error));
      return;
    }
  }
  endTurn();
});

// -- the stage's video --------------------------------------------------------------------------------

function stageStatus(text) {
  const status = $('stage-status');
  if (status.textContent !== text) status.textContent = text;
}

function setupStage() {
  stageView = createStageView($('stage-video'), { emptyText: t('th.stage.empty'), soundButton: $('sound-on') });
  stage = new StageConnection(socket, {
    onLayout: (slots) => stageView.setSlots(slots),
    onState: (state) => {
      if (state === 'failed') stageStatus(t('th.stage.failed'));
      else if (state === 'connected' && $('stage-status').textContent === t('th.stage.failed')) stageStatus('');
    },
    onAudioOnly: () => {
      stageView.setAudioOnly(true);
      stageStatus(t('th.stage.audio_only'));
    },
    onEnd: () => {
      endTurn({ resync: false });
      stageView.clear();
    },
  });
}

/** Your turn on stage is over (sent off, left, or the event ended): camera off, back to watching. */
function endTurn({ resync = true } = {}) {
  const was = guestTurn || camera;
  guestTurn = false;
  stopStream(camera);
  camera = null;
  stageView?.setSelf(null);
  if (was && resync) syncStage();
}

/** Bring the connection in line with the event: watch while live, publish while on stage, else nothing.
 * Runs one at a time; with `reoffer` set it offers again even in the same role (the socket reconnected). */
function syncStage() {
  stageSync = stageSync.then(reconcileStage, reconcileStage);
}

async function reconcileStage() {
  if (!stage) return;
  const live = event.state === 'live' && socket?.connected;
  if (!live) {
    if (stage.mode) await stage.leave({ tell: Boolean(socket?.connected) && event.state === 'live' });
    if (event.state !== 'live') endTurn({ resync: false });
    stageView.clear();
    stageStatus('');
    return;
  }
  const publish = guestTurn && camera !== null;
  const mode = publish ? 'publisher' : 'viewer';
  if (stage.mode === mode && !reoffer) return;
  reoffer = false;
  stageView.setAudioOnly(false);
  if ($('stage-status').textContent === t('th.stage.audio_only')) stageStatus('');
  try {
    await stage.connect(publish ? camera : null);
  } catch (error) {
    if (publish && error.code === 'not_invited') {
      endTurn(); // no longer on stage: watch instead
      return;
    }
    if (error.code !== 'event_not_live') stageStatus(stageProblem(error, errorMessage));
  }
}

// -- the published recording --------------------------------------------------------------------------

let player = null; // {video, track} once the recording is shown

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return hh ? `${hh}:${String(mm).padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

function startAt() {
  const value = Number(new URLSearchParams(window.location.search).get('t'));
  return Number.isFinite(value) && value > 0 ? value : null;
}

function renderRecording() {
  const show = event.state === 'ended' && Boolean(event.published);
  const section = $('recording');
  if (!show) {
    section.hidden = true;
    if (player) {
      player.video.removeAttribute('src');
      player.video.replaceChildren();
      player.video.load();
      $('chapters').replaceChildren();
      player = null;
    }
    return;
  }
  if (player) return;
  section.hidden = false;
  const video = $('recording-player');
  const base = `/townhall/${encodeURIComponent(event.id)}`;
  const element = h('track', {
    kind: 'chapters', src: `${base}/chapters.vtt`, srclang: document.documentElement.lang || 'de', label: t('th.rec.chapters'), default: true,
  });
  video.append(element);
  video.src = `${base}/recording.webm`;
  // Browsers draw no chapter menu of their own: load the cues (mode hidden) and build one.
  element.track.mode = 'hidden';
  player = { video, track: element.track };
  const build = () => buildChapters(element.track);
  if (element.readyState === 2) build();
  else element.addEventListener('load', build, { once: true });
  element.addEventListener('error', () => {
    $('chapters-status').textContent = t('th.rec.chapters_failed');
  }, { once: true });
  for (const type of ['timeupdate', 'seeked']) video.addEventListener(type, markChapter);
  const at = startAt();
  if (at !== null) {
    video.addEventListener('loadedmetadata', () => {
      video.currentTime = Number.isFinite(video.duration) ? Math.min(at, video.duration) : at;
    }, { once: true });
  }
  if (at !== null || window.location.hash === '#recording') {
    section.scrollIntoView();
    section.focus();
  }
}

function buildChapters(track) {
  const cues = [...(track.cues || [])];
  $('chapters-status').textContent = '';
  $('chapters').replaceChildren(...cues.map((cue) => h(
    'li',
    {},
    h('button', {
      type: 'button',
      class: 'th-chapter',
      'aria-label': t('th.rec.jump', { time: clock(cue.startTime), title: cue.text }),
      dataset: { start: String(cue.startTime) },
    }, h('span', { class: 'th-chapter__time' }, clock(cue.startTime)), ' ', h('span', { class: 'th-chapter__title' }, cue.text)),
  )));
  markChapter();
}

/** The chapter playing now is marked (aria-current): the last one that starts at or before the position. */
function markChapter() {
  if (!player) return;
  const now = player.video.currentTime + 0.01; // a seek to a chapter's start lands on it, not just before
  const buttons = [...$('chapters').querySelectorAll('button[data-start]')];
  const current = buttons.filter((button) => Number(button.dataset.start) <= now).pop();
  for (const button of buttons) {
    if (button === current) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
  }
}

$('chapters').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-start]');
  if (!button || !player) return;
  player.video.currentTime = Number(button.dataset.start);
  play(player.video);
});

// -- joining and the socket ---------------------------------------------------------------------------

async function join() {
  const { body } = await request('POST', `/api/townhall/events/${encodeURIComponent(event.id)}/audience`, { token: keptToken() || undefined });
  token = body.token;
  audienceId = body.audience;
  myVotes = new Set(body.my_votes);
  save(TOKEN_KEY, token);
}

function connect() {
  setConnection('connecting');
  socket = window.io({ auth: { townhall: token }, reconnectionDelayMax: 10000 });
  reconnectAfterStop(socket);
  stage?.dispose(); // a socket of its own (joined afresh): a stage connection of its own
  setupStage();
  socket.on('connect', () => setConnection('connected'));
  socket.on('disconnect', (reason) => {
    stage?.close(); // the server drops a socket's stage connection with it: offer again on th_state
    if (reason !== 'io client disconnect') setConnection('reconnecting');
  });
  socket.on('connect_error', async (error) => {
    setConnection('reconnecting');
    if (error?.message === 'event_not_found') {
      // The kept token is unknown (the event's audience was reset): join afresh once.
      socket.disconnect();
      try {
        localStorage.removeItem(TOKEN_KEY);
      } catch {
        /* storage disabled */
      }
      token = null;
      try {
        await join();
        connect();
      } catch (err) {
        showStatus(errorMessage(err));
      }
      return;
    }
    if (!socket.active) setTimeout(() => socket.connect(), 5000);
  });
  socket.on('th_state', (state) => {
    audienceId = state.audience;
    handRaised = Boolean(state.hand_raised); // a reload keeps a raised hand raised
    myVotes = new Set(state.my_votes);
    event = state.event;
    questions = state.questions;
    if (guestTurn && myStage()?.state !== 'on_stage') endTurn({ resync: false });
    if (!guestTurn && myStage()?.state === 'on_stage') {
      // On stage without a camera here (the page was reloaded): leave rather than stand there unseen.
      emit(socket, 'th_stage_leave', {}).then(() => announce(t('th.stage_ended')), () => {});
    }
    reoffer = true; // a new socket: the server knows no stage connection of ours
    renderEvent();
    renderQuestions();
  });
  socket.on('th_event', (next) => {
    if (next.id !== event.id) return;
    if (next.published && !event.published) announce(t('th.rec.available'));
    event = next;
    renderEvent();
    renderQuestions(); // pinned and answering badges
  });
  socket.on('th_questions', (update) => {
    if (update.event !== event.id) return;
    questions = update.questions;
    renderQuestions();
  });
  socket.on('th_invited', () => openInvite());
  socket.on('th_stage_ended', () => {
    if ($('invite-dialog').open && !checking) $('invite-dialog').close();
    endTurn();
    announce(t('th.stage_ended'));
  });
}

function showStatus(text) {
  const status = $('event-status');
  status.textContent = text;
  status.hidden = !text;
}

async function start() {
  fillTimes();
  renderEvent();
  renderMine();
  try {
    await join();
  } catch (error) {
    // Full or unreachable: show the public list all the same.
    showStatus(errorMessage(error));
    try {
      const { body } = await request('GET', `/api/townhall/events/${encodeURIComponent(event.id)}`);
      event = body.event;
      questions = body.questions;
      renderEvent();
      renderQuestions();
    } catch {
      /* the status already says what is wrong */
    }
    return;
  }
  connect();
  // The advance-question deadline passes while the page is open.
  setInterval(() => {
    $('ask-section').hidden = !questionsOpen();
    $('ask-closed').hidden = questionsOpen();
  }, 30000);
}

start();
