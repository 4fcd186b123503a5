// The consultation view, the same for citizen, clerk and invited colleague: the counterpart large,
// a second remote small, the own picture smaller still, controls, connection quality and a chat.
import { h, t } from './common.js';
import { ask, play, rateQuality } from './media.js';
import { createRecording } from './recording.js';

const QUALITY_MS = 3000;
const CHAT_MAX = 1000;

function roleLabel(role) {
  const key = `media.role.${role}`;
  const text = t(key);
  return text === key ? '' : text;
}

function qualityText(rating) {
  return t(`media.quality.${rating.level}`);
}

function tile(kind) {
  const video = h('video', { class: 'tile__video', autoplay: true, playsinline: true });
  const placeholder = h('p', { class: 'tile__placeholder' });
  const name = h('span', { class: 'tile__name' });
  const quality = h('span', { class: 'quality', hidden: true });
  const element = h(
    'figure',
    { class: `tile tile--${kind}` },
    video,
    placeholder,
    h('figcaption', { class: 'tile__caption' }, name, quality),
  );
  return { element, video, placeholder, name, quality, slot: null, stream: null, rating: null };
}

/**
 * Build the view into `container`. Options: `session` (a MediaSession), `socket`, `role` (citizen,
 * clerk or colleague), `audioOnly` (show no video), `canShare`, `invite` ({candidates(), send(username)}
 * or null), `onHangUp()`, `selfLabel`, `self` (own participant id) and `canRecord` (may ask to record:
 * the clerk holding the consultation in a department that allows recordings).
 */
export function createConsultation(container, options) {
  const { session, socket, role, canShare = false, invite = null, onHangUp } = options;
  let audioOnly = Boolean(options.audioOnly);
  const counterpartRole = role === 'citizen' ? 'clerk' : 'citizen'; // a guest looks at the citizen

  const main = tile('main');
  const second = tile('second');
  second.element.hidden = true;
  const self = tile('self');
  self.video.muted = true;
  self.name.textContent = options.selfLabel || t('media.you');

  const status = h('p', { class: 'consult__status', role: 'status' });
  const soundButton = h('button', { type: 'button', class: 'button button--primary', hidden: true }, t('media.sound_on'));
  const micButton = h('button', { type: 'button', class: 'button toggle', 'aria-pressed': 'false' }, t('media.mic_off'));
  const cameraButton = h('button', { type: 'button', class: 'button toggle', 'aria-pressed': 'false' }, t('media.camera_off'));
  const shareButton = canShare
    ? h('button', { type: 'button', class: 'button toggle', 'aria-pressed': 'false' }, t('media.share'))
    : null;
  const hangUpButton = h('button', { type: 'button', class: 'button button--danger' }, options.hangUpLabel || t('media.hang_up'));

  let inviteBox = null;
  let inviteSelect = null;
  let inviteStatus = null;
  if (invite) {
    const id = `invite-${Math.random().toString(36).slice(2, 8)}`;
    inviteSelect = h('select', { id });
    inviteStatus = h('p', { class: 'hint', role: 'status' });
    inviteBox = h(
      'form',
      { class: 'consult__invite' },
      h('label', { for: id }, t('media.invite_label')),
      h('div', { class: 'inline-field' }, inviteSelect, h('button', { type: 'submit', class: 'button' }, t('media.invite'))),
      inviteStatus,
    );
    inviteBox.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!inviteSelect.value) return;
      const username = inviteSelect.value;
      const name = invite.candidates().find((c) => c.username === username)?.name || username;
      inviteStatus.textContent = (await invite.send(username)) ? t('media.invited', { name }) : '';
    });
  }

  const chatLog = h('ol', { class: 'chat__log', role: 'log', 'aria-live': 'polite', 'aria-label': t('media.chat') });
  const chatEmpty = h('p', { class: 'chat__empty muted' }, t('media.chat_empty'));
  const chatId = `chat-${Math.random().toString(36).slice(2, 8)}`;
  const chatInput = h('input', { id: chatId, type: 'text', maxlength: CHAT_MAX, autocomplete: 'off' });
  const chatError = h('p', { class: 'notice notice--error', role: 'alert', hidden: true });
  const chatForm = h(
    'form',
    { class: 'chat__form' },
    h('label', { for: chatId }, t('media.chat_label')),
    h('div', { class: 'inline-field' }, chatInput, h('button', { type: 'submit', class: 'button' }, t('media.send'))),
    chatError,
  );

  const root = h(
    'div',
    { class: 'consult' },
    h(
      'div',
      { class: 'consult__main' },
      h('div', { class: 'consult__stage' }, main.element, second.element, self.element),
      status,
      h(
        'div',
        { class: 'consult__controls', role: 'group', 'aria-label': t('media.controls') },
        soundButton,
        micButton,
        cameraButton,
        shareButton,
        hangUpButton,
      ),
      inviteBox,
    ),
    h('section', { class: 'consult__chat chat', 'aria-label': t('media.chat') }, h('h3', {}, t('media.chat')), chatEmpty, chatLog, chatForm),
  );
  container.replaceChildren(root);
  const recording = createRecording(root.querySelector('.consult__main'), {
    socket,
    canRequest: Boolean(options.canRecord),
    announce: (text) => announce(text),
    self: options.self || null,
  });

  // -- own picture and controls ---------------------------------------------------------------------

  function showSelf() {
    const track = session.screenTrack || session.cameraTrack;
    const visible = Boolean(track) && !audioOnly && (session.cameraOn || session.screenTrack);
    self.element.classList.toggle('tile--off', !visible);
    self.placeholder.textContent = visible ? '' : track ? t('media.camera_is_off') : t('media.no_camera');
    if (track && self.stream?.getVideoTracks()[0] !== track) {
      self.stream = new MediaStream([track]);
      self.video.srcObject = self.stream;
      play(self.video);
    }
    cameraButton.disabled = !session.cameraTrack;
    micButton.disabled = !session.stream?.getAudioTracks().length;
  }

  function announce(text) {
    status.textContent = text;
  }

  micButton.addEventListener('click', () => {
    const off = micButton.getAttribute('aria-pressed') !== 'true';
    session.setMic(!off);
    micButton.setAttribute('aria-pressed', String(off));
    announce(off ? t('media.mic_is_off') : t('media.mic_is_on'));
  });
  cameraButton.addEventListener('click', () => {
    const off = cameraButton.getAttribute('aria-pressed') !== 'true';
    session.setCamera(!off);
    cameraButton.setAttribute('aria-pressed', String(off));
    announce(off ? t('media.camera_is_off') : t('media.camera_is_on'));
    showSelf();
  });
  shareButton?.addEventListener('click', async () => {
    if (session.screenTrack) {
      await session.stopShare();
      shareEnded();
      return;
    }
    try {
      await session.shareScreen(shareEnded);
    } catch {
      announce(t('media.share_failed'));
      return;
    }
    shareButton.setAttribute('aria-pressed', 'true');
    announce(t('media.sharing'));
    showSelf();
  });
  function shareEnded() {
    shareButton?.setAttribute('aria-pressed', 'false');
    announce(t('media.share_ended'));
    showSelf();
  }
  hangUpButton.addEventListener('click', () => onHangUp?.());
  soundButton.addEventListener('click', () => {
    for (const element of [main.video, second.video]) {
      element.muted = false;
      play(element);
    }
    soundButton.hidden = true;
  });
  const needsClick = () => {
    soundButton.hidden = false;
  };

  // -- remotes ----------------------------------------------------------------------------------------

  function fill(target, slot, waitingText) {
    target.slot = slot;
    if (!slot) {
      target.name.textContent = '';
      target.quality.hidden = true;
      target.placeholder.textContent = waitingText;
      target.element.classList.add('tile--off');
      if (target.stream) {
        target.video.srcObject = null;
        target.stream = null;
      }
      return;
    }
    const label = roleLabel(slot.role);
    target.name.textContent = label ? `${slot.name} (${label})` : slot.name;
    const tracks = [slot.audio, audioOnly ? null : slot.video].filter(Boolean);
    const same = target.stream && tracks.every((track) => target.stream.getTracks().includes(track))
      && target.stream.getTracks().length === tracks.length;
    if (!same) {
      target.stream = new MediaStream(tracks);
      target.video.srcObject = target.stream;
      play(target.video, needsClick);
    }
    updatePicture(target);
  }

  function updatePicture(target) {
    const video = target.slot?.video;
    const live = !audioOnly && video && !video.muted && target.video.videoWidth > 0;
    target.element.classList.toggle('tile--off', !live);
    if (!target.slot) return;
    let text = '';
    if (audioOnly) text = t('media.audio_only_tile', { name: target.slot.name });
    else if (!live) text = t('media.waiting_for_picture', { name: target.slot.name });
    target.placeholder.textContent = text;
  }

  for (const target of [main, second]) {
    for (const type of ['resize', 'playing', 'emptied']) target.video.addEventListener(type, () => updatePicture(target));
  }

  let currentSlots = [];
  let waitingText = null; // set by the page: why nobody is there (e.g. the clerk ended the video)
  let lastCounterpart = null; // the name of the counterpart once seen: gone again means the connection dropped

  /** What the main tile says while the counterpart is not there: not yet joined, dropped, or ended. */
  function absentText() {
    if (waitingText) return waitingText;
    if (lastCounterpart) return t('media.counterpart_lost', { name: lastCounterpart });
    return role === 'citizen' ? t('media.waiting_for_clerk') : t('media.waiting_for_citizen');
  }

  function setSlots(slots) {
    currentSlots = slots;
    const counterpart = slots.find((slot) => slot.role === counterpartRole) || slots[0] || null;
    const others = slots.filter((slot) => slot !== counterpart);
    if (counterpart?.name) lastCounterpart = counterpart.name;
    fill(main, counterpart, absentText());
    second.element.hidden = others.length === 0;
    fill(second, others[0] || null, '');
    for (const slot of slots) {
      for (const track of [slot.video, slot.audio]) {
        if (!track || track.sps_watched) continue;
        track.sps_watched = true;
        track.addEventListener('mute', () => [main, second].forEach(updatePicture));
        track.addEventListener('unmute', () => [main, second].forEach(updatePicture));
      }
    }
  }

  // -- quality ----------------------------------------------------------------------------------------

  // One source of truth: each slot's rating is computed once per interval from getStats(), and both the tile
  // and the status line (announcements when it turns poor and when it recovers) show that rating.
  let previous = null;
  const measure = async () => {
    let sample;
    try {
      sample = await session.inbound();
    } catch {
      return;
    }
    if (previous && previous.connection !== sample.connection) previous = null; // a new connection: counters restart
    for (const target of [main, second]) {
      if (!target.slot) continue;
      const mids = [target.slot.audio_mid, target.slot.video_mid].filter((mid) => mid !== null && mid !== undefined).map(String);
      const rating = rateQuality(previous, sample, mids, !audioOnly && target.slot.video && !target.slot.video.muted);
      if (rating.level === 'unknown') continue;
      const text = qualityText(rating);
      target.quality.hidden = false;
      target.quality.className = `quality quality--${rating.level}`;
      target.quality.textContent = text;
      target.quality.title = rating.rtt !== null && rating.rtt !== undefined
        ? t('media.quality_detail', {
            loss: Math.round(rating.loss * 100),
            rtt: Math.round(rating.rtt * 1000),
            kbps: Math.round(rating.kbps),
          })
        : '';
      // Tell screen-reader users once when a connection turns poor and once when it recovers, not every few
      // seconds; the status line never contradicts the tile.
      if (rating.level === 'poor' && target.rating !== 'poor') {
        announce(t('media.quality_poor_announce', { name: target.slot.name }));
      } else if (target.rating === 'poor' && (rating.level === 'good' || rating.level === 'fair')) {
        announce(t('media.quality_recovered', { name: target.slot.name }));
      }
      target.rating = rating.level;
    }
    previous = sample;
  };
  const timer = setInterval(measure, QUALITY_MS);
  setTimeout(measure, 1000); // a first sample early: the first rating then comes after 4 s

  // -- chat -------------------------------------------------------------------------------------------

  function addChat({ from, role: senderRole, text, at }, own = false) {
    chatEmpty.hidden = true;
    const when = new Date((at ?? Date.now() / 1000) * 1000);
    const time = when.toLocaleTimeString(document.documentElement.lang || undefined, { hour: '2-digit', minute: '2-digit' });
    const label = own ? t('media.you') : from || roleLabel(senderRole);
    chatLog.append(
      h(
        'li',
        { class: own ? 'chat__message chat__message--own' : 'chat__message' },
        h('p', { class: 'chat__meta' }, h('strong', {}, label), ' ', h('time', { datetime: when.toISOString() }, time)),
        h('p', { class: 'chat__text' }, text),
      ),
    );
    chatLog.scrollTop = chatLog.scrollHeight;
  }

  // The server sends a message to the others only: our own is shown once it is acknowledged.
  const onChat = (message) => addChat(message);
  socket.on('chat', onChat);

  chatForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = chatInput.value.trim();
    if (!text) return;
    chatError.hidden = true;
    try {
      await ask(socket, 'chat', { text });
    } catch {
      chatError.textContent = t('media.chat_failed');
      chatError.hidden = false;
      return;
    }
    chatInput.value = '';
    addChat({ text, at: Date.now() / 1000 }, true);
  });

  function refreshInvite() {
    if (!inviteSelect) return;
    const chosen = inviteSelect.value;
    const candidates = invite.candidates();
    inviteSelect.replaceChildren(...candidates.map(({ username, label }) => h('option', { value: username }, label)));
    if (candidates.some((c) => c.username === chosen)) inviteSelect.value = chosen;
    inviteBox.hidden = candidates.length === 0;
  }

  showSelf();
  setSlots([]);
  refreshInvite();

  return {
    root,
    setSlots,
    showSelf,
    announce,
    refreshInvite,
    setWaitingText(text) {
      waitingText = text || null;
      setSlots(currentSlots);
    },
    setAudioOnly(value) {
      audioOnly = value;
      showSelf();
    },
    destroy() {
      clearInterval(timer);
      recording.destroy();
      socket.off('chat', onChat);
      for (const target of [main, second, self]) target.video.srcObject = null;
      container.replaceChildren();
    },
  };
}
