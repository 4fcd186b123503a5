// The waiting page: position and estimate live from the compact `queue` update, the call, the end.
import {
  FINAL_STATES,
  askNotificationPermission,
  chime,
  errorMessage,
  estimateText,
  forgetToken,
  notify,
  pageData,
  reconnectAfterStop,
  request,
  say,
  storeToken,
  storedToken,
  t,
  tn,
  unlockAudio,
  whenText,
} from './common.js';
import { estimateWait, positionIn } from './estimate.js';
import { MediaSession, micLevel, openLocalMedia, play, stopStream, storeMode, storedMode, testTone } from './media.js';
import { createConsultation } from './consult.js';

const ACK_TIMEOUT_MS = 10000;
const data = pageData();
const baseTitle = document.title;
const $ = (id) => document.getElementById(id);
const views = {
  waiting: $('waiting-view'),
  called: $('called-view'),
  consultation: $('consultation-view'),
  final: $('final-view'),
};
const field = (name) => document.querySelector(`[data-field="${name}"]`);
const connection = $('connection');
const positionText = $('position-text');

let ticket = null;
const queues = {}; // department id -> its latest `queue` update
let socket = null;

// The fragment carries the token from the check-in (and survives a bookmark); localStorage keeps it
// for a reload without the fragment.
const fromFragment = decodeURIComponent(window.location.hash.slice(1));
const token = fromFragment || storedToken();
if (fromFragment) storeToken(fromFragment);

const waitHeading = $('wait-heading').textContent;
const mediaSupported = Boolean(window.RTCPeerConnection && navigator.mediaDevices?.getUserMedia);

function show(view) {
  for (const [name, element] of Object.entries(views)) element.hidden = name !== view;
  if (view !== 'called') stopAnswerCountdown();
  $('controls').hidden = !(view === 'waiting' || view === 'called');
  $('check').hidden = !(view === 'waiting' && mediaSupported);
  document.body.classList.toggle('page-consult', view === 'consultation');
  $('wait-heading').textContent = view === 'consultation' ? t('media.title') : waitHeading;
  if (view !== 'waiting') endCheckView();
  if (view !== 'consultation') closeConsultationView();
}

function setConnection(state) {
  connection.dataset.state = state;
  connection.textContent = { connecting: t('connecting'), connected: t('connected'), reconnecting: t('reconnecting') }[state];
  connection.hidden = state === 'connected';
}

function notice(text) {
  say($('notice'), text);
}

function renderWaiting() {
  const queue = queues[ticket.department];
  const fromQueue = queue ? positionIn(queue.w, ticket.seq) : null;
  const position = fromQueue ?? ticket.position;
  field('department').textContent = ticket.department_name;
  field('number').textContent = String(ticket.seq);
  field('position-number').textContent = position ? String(position) : '–';
  // Only touch the live region when the sentence changes: each change is announced.
  const sentence = !position ? t('position_unknown') : position === 1 ? t('position_next') : t('position', { n: position });
  if (positionText.textContent !== sentence) positionText.textContent = sentence;
  document.title = position ? `(${position}) ${baseTitle}` : baseTitle;

  const clerks = queue ? queue.a + queue.b : null;
  const closed = Boolean(queue && !queue.open);
  // A booked appointment is called at its time, ahead of walk-ins: the walk-in estimate is not for it.
  const appointment = field('appointment');
  appointment.textContent = ticket.appointment_at ? t('appointment_wait', { time: appointmentTime(ticket.appointment_at) }) : '';
  appointment.hidden = !appointment.textContent;
  const range = position && clerks && !closed && !ticket.appointment_at ? estimateWait(position, clerks, queue.s) : null;
  field('estimate').textContent = estimateText(range) ?? '–';
  let status = '';
  if (closed) status = closedSentence(queue);
  else if (clerks === 0) status = t('no_clerk_wait');
  else if (clerks) status = tn('clerks', clerks);
  field('clerks').textContent = status;
  const closure = field('closure');
  closure.textContent = closed && queue.msg ? queue.msg : '';
  closure.hidden = !closure.textContent;
}

function appointmentTime(epoch) {
  return new Intl.DateTimeFormat(document.documentElement.lang || 'de', { hour: 'numeric', minute: '2-digit', timeZone: data.timezone })
    .format(new Date(epoch * 1000));
}

/** A closed department: when it opens again and what happens to the place (docs/protocol.md, `queue`). */
function closedSentence(queue) {
  const department = ticket.department_name;
  return queue.next
    ? t('closed_wait', { department, when: whenText(queue.next, data.timezone) })
    : t('closed_wait_unknown', { department });
}

function alertCalled() {
  const text = ticket.clerk_name ? t('called_by', { clerk: ticket.clerk_name }) : t('called_by_anonymous');
  // Announced once, with the time to answer; the countdown itself is not read out every second.
  const within = ticket.answer_seconds ? ` ${t('answer_within', { time: durationWords(ticket.answer_seconds) })}` : '';
  $('alert').textContent = `${t('called_title')} ${text}${within}`;
  document.title = t('document_called');
  chime([660, 880, 1100]);
  setTimeout(() => chime([660, 880, 1100]), 1600);
  navigator.vibrate?.([300, 150, 300]);
  notify(t('called_title'), t('notification_called', { clerk: ticket.clerk_name || '' }).trim(), 'sps-called');
  $('answer').focus();
}

const REJOIN_STATES = new Set(['left', 'no_show', 'expired', 'closed']);

/** The end of the visit: a heading and a sentence of its own per final state, and the next step. */
function finish(state, message) {
  notice('');
  show('final');
  clearTimeout(rejoinTimer);
  $('rejoin-place').hidden = true;
  $('wait-heading').textContent = t(`final_title.${state}`);
  field('final').textContent = message;
  const rejoin = $('rejoin');
  rejoin.hidden = !(ticket && REJOIN_STATES.has(state));
  if (ticket) rejoin.href = `/join/${encodeURIComponent(ticket.department)}`;
  $('alert').textContent = '';
  document.title = baseTitle;
  forgetToken(token);
  connection.hidden = true;
  socket?.disconnect();
}

function applyTicket(next) {
  const previous = ticket;
  ticket = next;
  if (next.id !== data.ticket_id) {
    // The stored token belongs to another ticket than the URL names: show the right address.
    data.ticket_id = next.id;
    history.replaceState(null, '', `/wait/${encodeURIComponent(next.id)}#${token}`);
  }
  switch (next.state) {
    case 'waiting': {
      if (previous && previous.department !== next.department) {
        notice(transferredText(next));
        socket?.emit('subscribe', (ack) => ack?.ticket && applyTicket(ack.ticket));
      } else if (previous && (previous.state === 'called' || previous.state === 'in_consultation')) {
        notice([t('returned'), next.department_open === false ? closedNowText(next) : ''].filter(Boolean).join(' '));
      } else if (previous?.state === 'no_show') {
        notice(t('rejoined'));
      }
      $('alert').textContent = '';
      if (purpose === 'consultation') endMedia(false);
      show('waiting');
      renderWaiting();
      updatePrewarm();
      break;
    }
    case 'called': {
      notice('');
      field('called-by').textContent = next.clerk_name
        ? t('called_by', { clerk: next.clerk_name })
        : t('called_by_anonymous');
      show('called');
      if (previous?.state !== 'called') {
        startAnswerCountdown(next);
        alertCalled();
      }
      // Connect while the citizen reads the call (no camera yet): answering only adds the tracks.
      if (mediaSupported && socket?.connected) {
        purpose = 'consultation';
        if (!session?.pc && !connecting) offer({}, 'consultation').catch(() => reofferSoon());
      }
      break;
    }
    case 'in_consultation': {
      notice('');
      $('alert').textContent = '';
      document.title = baseTitle;
      if (previous?.state !== 'in_consultation') clerkLeft = false;
      renderConsultationState();
      show('consultation');
      if (previous?.state !== 'in_consultation') $('consultation-heading').focus();
      openConsultation();
      break;
    }
    default:
      if (FINAL_STATES.has(next.state)) {
        endMedia(false);
        if (next.state === 'no_show' && next.rejoin_seconds_left > 0) offerRejoin(next);
        else finish(next.ended_by === 'department_closed' ? 'closed' : next.state, finalText(next));
      }
  }
  if (!previous || previous.state !== next.state) focusHeadingIfLost();
}

/** The page just opened (after the check-in, a reload, a link), or the state changed and took the focused
 * control away (the leave button after leaving, the call's button after a return, the video after the end):
 * the focus goes to the heading, which says where the citizen stands. A focus that is still somewhere
 * visible (the call's button, the consultation's heading, a control the person chose) stays. */
function focusHeadingIfLost() {
  const active = document.activeElement;
  if (active && active !== document.body && active.checkVisibility?.() !== false) return;
  const heading = $('wait-heading');
  heading.tabIndex = -1;
  heading.focus();
}

function finalText(next) {
  // A lead closed the department and waiting citizens lost their place: state `expired`, `ended_by` says why.
  if (next.state !== 'closed' && next.ended_by !== 'department_closed') return t(next.state);
  const queue = queues[next.department];
  const text = [t('closed_ticket', { department: next.department_name }), next.closed_message].filter(Boolean).join(' ');
  return queue && !queue.open && queue.next ? `${text} ${t('opens', { when: whenText(queue.next, data.timezone) })}.` : text;
}

// -- no-show fairness: the time to answer a call, taking the old place back after a no-show ---------------

const answer = { timer: null, until: 0, total: 0, warned: false };
let rejoinTimer = null;

/** "2 Minuten", "einer Minute", "90 Sekunden": a length of time for a sentence. */
function durationWords(seconds) {
  if (seconds === 60) return t('duration_one_minute');
  if (seconds >= 120 && seconds % 60 === 0) return t('duration_minutes', { minutes: seconds / 60 });
  return t('duration_seconds', { seconds: Math.round(seconds) });
}

function clockText(seconds) {
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

/** The called citizen's countdown: visible every second, announced at the call (alertCalled) and once more
 * near its end (a visual and spoken alert, no sound or vibration), never every second. */
function startAnswerCountdown(next) {
  stopAnswerCountdown();
  if (next.answer_seconds_left == null || !next.answer_seconds) return;
  answer.total = next.answer_seconds;
  answer.until = Date.now() + next.answer_seconds_left * 1000;
  answer.warned = next.answer_seconds_left <= warnAt(); // a reload near the end: no second alarm at once
  $('answer-time').hidden = false;
  tickAnswer();
  answer.timer = setInterval(tickAnswer, 1000);
}

function warnAt() {
  return Math.min(30, answer.total / 2);
}

function tickAnswer() {
  const left = Math.max(0, Math.ceil((answer.until - Date.now()) / 1000));
  if (left <= 0) {
    clearInterval(answer.timer);
    answer.timer = null;
    $('answer-time').textContent = t('answer_over');
    return;
  }
  $('answer-time').textContent = t('answer_left', { time: clockText(left) });
  if (!answer.warned && left <= warnAt()) {
    answer.warned = true;
    const text = t('answer_soon', { seconds: left });
    const warning = $('answer-warning');
    warning.textContent = text;
    warning.hidden = false;
    views.called.classList.add('status-card--urgent');
    $('alert').textContent = text;
  }
}

function stopAnswerCountdown() {
  clearInterval(answer.timer);
  answer.timer = null;
  $('answer-time').hidden = true;
  $('answer-warning').hidden = true;
  views.called.classList.remove('status-card--urgent');
}

/** A no-show who may still take the old place back: say so without blaming, and offer it. */
function offerRejoin(next) {
  notice('');
  show('final');
  $('wait-heading').textContent = t('final_title.no_show');
  const until = new Date(Date.now() + next.rejoin_seconds_left * 1000);
  const time = until.toLocaleTimeString(document.documentElement.lang || undefined, { hour: 'numeric', minute: '2-digit' });
  field('final').textContent = t('no_show_rejoin', { time });
  $('rejoin').hidden = true; // a new check-in is the second choice while the old place can be had
  const button = $('rejoin-place');
  button.hidden = false;
  button.disabled = false;
  $('alert').textContent = '';
  document.title = baseTitle;
  button.focus(); // the "join now" button just went away; this is where the citizen goes on
  clearTimeout(rejoinTimer);
  rejoinTimer = setTimeout(() => {
    if (ticket?.state === 'no_show') finish('no_show', t('no_show'));
  }, next.rejoin_seconds_left * 1000);
}

/** The department the ticket waits in now is closed: when it opens (from the ticket; the queue update follows). */
function closedNowText(next) {
  const department = next.department_name;
  return next.next_opening
    ? t('closed_wait', { department, when: whenText(next.next_opening, data.timezone) })
    : t('closed_wait_unknown', { department });
}

function transferredText(next) {
  if (next.department_open !== false) return t('transferred', { department: next.department_name });
  if (next.next_opening) {
    return t('transferred_closed', { department: next.department_name, when: whenText(next.next_opening, data.timezone) });
  }
  return `${t('transferred', { department: next.department_name })} ${closedNowText(next)}`;
}

function unknownTicket() {
  forgetToken(token);
  notice('');
  show('final');
  $('wait-heading').textContent = t('final_title.unknown');
  field('final').textContent = t('unknown_ticket');
  connection.hidden = true;
  focusHeadingIfLost();
}

/** Send a citizen action over the socket, or over HTTP while the socket is down. */
async function act(event, method, url) {
  if (socket?.connected) {
    return new Promise((resolve, reject) => {
      socket.timeout(ACK_TIMEOUT_MS).emit(event, (err, ack) => {
        if (err) reject({ code: 'network' });
        else if (ack?.error) reject(ack.error);
        else resolve(ack.ticket);
      });
    });
  }
  const { body } = await request(method, url, { token });
  return body.ticket;
}

// -- media: device check, pre-warmed connection, consultation ---------------------------------------

const CHECK_DEADLINE_MS = 10000;
let session = null; // the page's one MediaSession (one RTCPeerConnection at most)
let purpose = null; // 'check' | 'prewarm' | 'consultation'
let connecting = null; // the pending connect() promise
let notYetAt = null; // the `queue.t` of the update after which the server said `not_yet`
let consultation = null; // the consultation view
let retries = 0;
let retryTimer = null;
const MIC_QUIET_MS = 8000;
const check = { meter: null, deadline: null, quiet: null, ok: false };

function mediaSession() {
  if (!session) session = new MediaSession(socket, { onLayout, onState });
  return session;
}

function currentPosition() {
  const queue = ticket && queues[ticket.department];
  return queue ? positionIn(queue.w, ticket.seq) : null;
}

/** Near the head of the queue: position ≤ 2 × available clerks (docs/protocol.md). */
function nearHead() {
  const queue = ticket && queues[ticket.department];
  const position = currentPosition();
  return Boolean(ticket?.state === 'waiting' && queue && position && queue.a > 0 && position <= 2 * queue.a);
}

async function offer(payload, why) {
  purpose = why;
  const media = mediaSession();
  const attempt = media.connect(payload);
  connecting = attempt;
  try {
    return await attempt;
  } finally {
    if (connecting === attempt) connecting = null;
  }
}

/** Hold a connection near the head of the queue (so that being called only switches forwarding on),
 * none further back. */
function updatePrewarm() {
  if (!mediaSupported || !socket?.connected || purpose === 'check' || connecting) return;
  const queue = queues[ticket?.department];
  if (nearHead()) {
    if (session?.pc || notYetAt === queue.t) return;
    offer({}, 'prewarm').catch((error) => {
      if (error.code === 'not_yet') notYetAt = queue.t; // try again with a later update
      if (purpose === 'prewarm') purpose = null;
    });
  } else if (purpose === 'prewarm' && ticket?.state === 'waiting') {
    purpose = null;
    session?.leave();
  }
}

function onLayout(slots) {
  if (purpose !== 'consultation') return;
  // The clerk (back) in the video: the consultation goes on.
  if (clerkLeft && slots.some((slot) => slot.role === 'clerk')) {
    clerkLeft = false;
    renderConsultationState();
  }
  consultation?.setSlots(slots.filter((slot) => slot.participant !== `citizen:${ticket.id}`));
}

let clerkLeft = false; // the clerk hung up the video; the ticket is still theirs to finish, return or transfer

/** The consultation's heading and next step: begun, or ended by the clerk (who still completes the ticket). */
function renderConsultationState() {
  const clerk = ticket?.clerk_name;
  let heading;
  if (clerkLeft) heading = clerk ? t('clerk_left', { clerk }) : t('clerk_left_anonymous');
  else heading = clerk ? t('in_consultation', { clerk }) : t('in_consultation_anonymous');
  field('consultation').textContent = heading;
  const next = $('consultation-next');
  const text = clerkLeft ? t('clerk_left_next') : '';
  if (next.textContent !== text) next.textContent = text;
  next.hidden = !text;
  consultation?.setWaitingText(clerkLeft ? heading : null);
}

function onMediaLeft(who) {
  if (who?.role !== 'clerk' || ticket?.state !== 'in_consultation') return;
  clerkLeft = true;
  renderConsultationState();
}

function onState(state, detail) {
  if (purpose === 'check') {
    if (state === 'failed') checkFailed('network');
    return;
  }
  if (purpose !== 'consultation') {
    if (state === 'failed') session?.leave(); // a pre-warmed connection: the next update may try again
    return;
  }
  if (state === 'connected') {
    retries = 0;
    consultation?.announce(t('media.connected'));
  } else if (state === 'failed') {
    consultation?.announce(t('media.reconnecting'));
    reofferSoon();
  } else if (state === 'connecting' && detail === undefined && session?.pc?.connectionState === 'disconnected') {
    consultation?.announce(t('media.unstable'));
  }
}

/** A dropped connection during the consultation: offer again, backing off a little. */
function reofferSoon() {
  clearTimeout(retryTimer);
  const delay = Math.min(10000, 1000 * 2 ** retries);
  retries += 1;
  retryTimer = setTimeout(() => {
    if (purpose === 'consultation' && (ticket?.state === 'in_consultation' || ticket?.state === 'called')) {
      offer({}, 'consultation').catch(() => reofferSoon());
    }
  }, delay);
}

// The device check ----------------------------------------------------------------------------------

const modeInputs = [...document.querySelectorAll('input[name="media-mode"]')];
for (const input of modeInputs) input.checked = input.value === storedMode();
for (const input of modeInputs) input.addEventListener('change', () => storeMode(input.value));

function checkError(key) {
  const box = $('check-error');
  say(box, t(`media.problem.${key}`));
  box.focus();
}

function checkResult(text, kind) {
  const box = $('check-result');
  box.className = `notice notice--${kind}`;
  say(box, text);
}

function checkFailed(reason) {
  if (purpose !== 'check' || check.ok) return;
  clearTimeout(check.deadline);
  checkResult(t(`media.problem.${reason}`), 'error');
}

async function startCheck() {
  unlockAudio();
  const mode = modeInputs.find((input) => input.checked)?.value || 'full';
  storeMode(mode);
  say($('check-error'), '');
  const button = $('check-start');
  button.disabled = true;
  let local;
  try {
    local = await openLocalMedia(mode);
  } catch (error) {
    button.disabled = false;
    checkError(error.code);
    return;
  }
  button.hidden = true;
  $('check-panel').hidden = false;
  check.ok = false;
  const media = mediaSession();
  await media.setStream(local.stream);
  const withVideo = Boolean(local.stream.getVideoTracks().length);
  $('check-tile').hidden = !withVideo;
  checkResult(local.missing === 'camera' ? t('media.problem.no_camera_fallback') : t('media.check_connecting'), local.missing ? 'warn' : 'info');
  $('check-result').focus(); // the button just went away: keep the focus in the test, on its status

  // "Wir hören Sie" only once a voice really arrived (not at the first click), else a hint after a while.
  check.meter = micLevel(local.stream.getAudioTracks()[0], (level, heard) => {
    $('mic-meter').value = level;
    if (heard && !$('mic-status').dataset.heard) {
      clearTimeout(check.quiet);
      $('mic-status').dataset.heard = '1';
      $('mic-status').textContent = t('media.mic_heard');
    }
  });
  clearTimeout(check.quiet);
  check.quiet = setTimeout(() => {
    if (!$('mic-status').dataset.heard) $('mic-status').textContent = t('media.mic_quiet');
  }, MIC_QUIET_MS);
  check.deadline = setTimeout(() => checkFailed('network'), CHECK_DEADLINE_MS);
  try {
    await offer({ check: true }, 'check');
  } catch (error) {
    checkFailed(error.code === 'network' ? 'server' : 'server');
    return;
  }
  watchSelfView(withVideo, local.missing);
}

/** The own picture (or sound) coming back through the server proves the whole media path. */
function watchSelfView(withVideo, missing) {
  const video = $('check-video');
  const succeed = () => {
    if (check.ok || purpose !== 'check') return;
    check.ok = true;
    clearTimeout(check.deadline);
    $('check-tile').classList.remove('tile--off');
    $('check-placeholder').textContent = '';
    checkResult(withVideo ? t('media.check_ok') : t('media.check_ok_audio'), missing ? 'warn' : 'ok');
  };
  if (withVideo) {
    const show = (track) => {
      if (video.srcObject?.getVideoTracks()[0] === track) return;
      video.srcObject = new MediaStream([track]);
      play(video);
    };
    for (const receiver of session.videoReceivers()) {
      const track = receiver.track;
      if (!track.muted) show(track);
      track.addEventListener('unmute', () => purpose === 'check' && show(track), { once: true });
    }
    video.addEventListener('resize', () => video.videoWidth > 0 && succeed());
  } else {
    const poll = setInterval(async () => {
      if (purpose !== 'check' || check.ok) {
        clearInterval(poll);
        return;
      }
      const { byMid } = await session.inbound();
      if (Object.values(byMid).some((entry) => entry.kind === 'audio' && entry.packets > 0)) succeed();
    }, 500);
  }
}

/** End the check view; keeps a connection near the head of the queue, closes it otherwise. */
function endCheckView() {
  if (purpose !== 'check' && $('check-panel').hidden) return;
  clearTimeout(check.deadline);
  clearTimeout(check.quiet);
  check.meter?.stop();
  check.meter = null;
  $('check-video').srcObject = null;
  $('check-panel').hidden = true;
  $('check-start').hidden = false;
  $('check-start').disabled = false;
  delete $('mic-status').dataset.heard;
  $('mic-status').textContent = t('media.mic_hint');
  say($('check-result'), '');
  if (purpose !== 'check') return;
  purpose = null;
  if (socket?.connected && session?.pc) socket.emit('media_check_done', () => {});
  // Nobody sees the citizen before the call: no camera or microphone while waiting.
  stopStream(session?.stream);
  session?.setStream(null);
  if (nearHead() || ticket?.state === 'called') purpose = ticket?.state === 'called' ? 'consultation' : 'prewarm';
  else session?.leave();
}

$('check-start').addEventListener('click', startCheck);
$('check-done').addEventListener('click', () => {
  endCheckView();
  $('check-start').focus();
  updatePrewarm();
});
$('speaker-test').addEventListener('click', () => {
  testTone();
  $('speaker-status').textContent = t('media.speaker_hint');
});

// The consultation ------------------------------------------------------------------------------------

async function ensureOwnMedia() {
  const media = mediaSession();
  if (media.stream) return;
  const mode = storedMode();
  try {
    const local = await openLocalMedia(mode);
    await media.setStream(local.stream);
    if (local.missing) notice(t('media.problem.no_camera_fallback'));
  } catch (error) {
    notice(t(`media.problem.${error.code}`));
  }
}

async function openConsultation() {
  if (!mediaSupported) {
    notice(t('media.problem.unsupported'));
    return;
  }
  if (!consultation) {
    const media = mediaSession();
    consultation = createConsultation($('consultation-media'), {
      session: media,
      socket,
      role: 'citizen',
      self: ticket ? `citizen:${ticket.id}` : null,
      audioOnly: storedMode() === 'audio',
      onHangUp: () => $('leave-dialog').showModal(),
      hangUpLabel: t('media.leave_consultation'),
    });
    $('leave-question').textContent = t('media.end_question');
    $('leave-explain').textContent = t('media.end_explain');
    $('leave-no').textContent = t('media.end_no');
    $('leave-yes').textContent = t('media.end_yes');
    renderConsultationState();
  }
  purpose = 'consultation';
  await ensureOwnMedia();
  consultation?.showSelf();
  if (!session.pc && !connecting) {
    offer({}, 'consultation').catch(() => reofferSoon());
  } else {
    session._applyLayout(session.layout);
  }
}

function closeConsultationView() {
  if (!consultation) return;
  consultation.destroy();
  consultation = null;
  $('leave-question').textContent = leaveTexts.question;
  $('leave-explain').textContent = leaveTexts.explain;
  $('leave-no').textContent = leaveTexts.no;
  $('leave-yes').textContent = leaveTexts.yes;
}

/** After the consultation (or the call) ended: no media at all, until pre-warming starts again. */
function endMedia(tell) {
  clearTimeout(retryTimer);
  retries = 0;
  purpose = null;
  const media = session;
  session = null;
  media?.dispose({ tell });
}

const leaveTexts = {
  question: $('leave-question').textContent,
  explain: $('leave-explain').textContent,
  no: $('leave-no').textContent,
  yes: $('leave-yes').textContent,
};

function connect() {
  setConnection('connecting');
  socket = window.io({ auth: { token }, reconnectionDelayMax: 10000 });
  reconnectAfterStop(socket);
  socket.on('connect', () => {
    setConnection('connected');
    // A new socket: a consultation's media is offered again (the server re-enters us into it).
    if (purpose === 'consultation' && session) offer({}, 'consultation').catch(() => reofferSoon());
  });
  socket.on('disconnect', (reason) => {
    if (reason !== 'io client disconnect') setConnection('reconnecting');
  });
  socket.on('media_end', () => endMedia(false));
  socket.on('media_left', onMediaLeft);
  socket.on('connect_error', (error) => {
    if (error?.message === 'ticket_not_found') {
      socket.disconnect();
      unknownTicket();
      return;
    }
    setConnection('reconnecting');
    // A refusal by the server (not a network failure) is not retried by the client on its own.
    if (!socket.active) setTimeout(() => socket.connect(), 5000);
  });
  socket.on('ticket', applyTicket);
  socket.on('queue', (update) => {
    const before = queues[update.d];
    // With several nodes an older update can arrive after a newer one (the page is sent a fresh one on
    // connecting, then another node's broadcast made before it): keep the newer, the position never goes back.
    if (before && update.t < before.t) return;
    queues[update.d] = update;
    if (ticket?.state === 'waiting' && update.d === ticket.department) {
      // Opening hours ended, or a lead closed the department (or opened it again): every page is told.
      if (before && before.open !== update.open) {
        notice(update.open ? t('reopened', { department: ticket.department_name }) : closedSentence(update));
      }
      renderWaiting();
      updatePrewarm();
    }
  });
}

$('answer').addEventListener('click', async () => {
  const button = $('answer');
  button.disabled = true;
  say($('answer-error'), '');
  if (mediaSupported) await ensureOwnMedia(); // asked from the click: the browser may prompt
  try {
    applyTicket(await act('answer', 'POST', '/api/tickets/me/answer'));
  } catch (error) {
    if (ticket?.state !== 'called') return; // the ticket moved on meanwhile; its own event said so
    say($('answer-error'), errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

$('rejoin-place').addEventListener('click', async () => {
  const button = $('rejoin-place');
  button.disabled = true;
  say($('rejoin-error'), '');
  try {
    const next = await act('rejoin', 'POST', '/api/tickets/me/rejoin');
    if (socket && !socket.connected) socket.connect();
    applyTicket(next);
    const heading = $('wait-heading'); // the button went away with the final view: focus goes to the page's start
    heading.tabIndex = -1;
    heading.focus();
  } catch (error) {
    if (ticket?.state !== 'no_show') return; // the ticket moved on meanwhile; its own event said so
    if (error.code === 'rejoin_expired') finish('no_show', t('no_show'));
    else say($('rejoin-error'), errorMessage(error));
  } finally {
    button.disabled = false;
  }
});

$('leave').addEventListener('click', () => $('leave-dialog').showModal());
$('leave-dialog').addEventListener('close', async () => {
  if ($('leave-dialog').returnValue !== 'leave') return;
  try {
    applyTicket(await act('leave', 'DELETE', '/api/tickets/me'));
  } catch (error) {
    // The `ticket` event may have ended the page (and its socket) before the acknowledgement came.
    if (!FINAL_STATES.has(ticket?.state)) notice(errorMessage(error));
  }
});

$('notify').addEventListener('click', async () => {
  unlockAudio();
  chime([660, 880]); // so that people know what to listen for
  const permission = await askNotificationPermission();
  $('notify-status').textContent = permission === 'denied' ? t('notify_denied') : t('notify_on');
  if (permission !== 'denied') $('notify').hidden = true;
});

if ('Notification' in window && Notification.permission === 'granted') {
  $('notify').hidden = true;
  $('notify-status').textContent = t('notify_on');
}

// Keep the token when switching the page language.
for (const link of document.querySelectorAll('[data-lang-link]')) {
  if (token) link.href = `${link.getAttribute('href')}#${token}`;
}

if (!token) {
  unknownTicket();
} else if (typeof window.io !== 'function') {
  setConnection('reconnecting');
  notice(t('err.network'));
} else {
  connect();
}
