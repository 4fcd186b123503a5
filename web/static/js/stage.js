// The town hall's stage in the browser (docs/protocol.md, "The stage (live video) and the published
// recording"): one RTCPeerConnection to the server, a viewer (three recvonly audio+video pairs) or a
// publisher (own camera and microphone as a sendrecv pair, plus two recvonly pairs), and the tiles that
// show the publishers of `th_media_layout`, the politician large.
import { h, t } from './common.js';
import { ask, openLocalMedia, play, stopStream } from './media.js';

const GATHER_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 10000;
const PAIRS = 3; // a viewer shows up to three publishers; a publisher shows the others in the rest

// Only what the server takes (VP8, Opus): Chromium's offer with every codec in three video sections is
// about 18 KB, over the socket's 16 KiB message cap; with these it is under 7 KB.
const WANTED = { video: /^video\/(vp8|rtx)$/i, audio: /^audio\/opus$/i };

function onlyOurCodecs(transceiver, kind) {
  const capabilities = window.RTCRtpReceiver?.getCapabilities?.(kind);
  if (!capabilities || typeof transceiver.setCodecPreferences !== 'function') return;
  const codecs = capabilities.codecs.filter((codec) => WANTED[kind].test(codec.mimeType));
  if (!codecs.some((codec) => !/rtx/i.test(codec.mimeType))) return;
  try {
    transceiver.setCodecPreferences(codecs);
  } catch {
    /* an older browser: the server insists on VP8 and Opus and answers `no_media` without them */
  }
}

// The server answers with every candidate (aiortc does no trickle ICE), and so must we: wait for ours.
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState !== 'complete') return;
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * One page's connection to an event's stage. `event` is the event id for staff sockets (audience sockets
 * are bound to their event by their token). Callbacks: `onLayout(slots)` with each slot's `audio` and
 * `video` receiver tracks resolved, `onState(state)` (connecting, connected, failed, closed),
 * `onAudioOnly()` and `onEnd()` (the event ended: the server closed the stage).
 */
export class StageConnection {
  constructor(socket, { event = null, onLayout = () => {}, onState = () => {}, onAudioOnly = () => {}, onEnd = () => {} } = {}) {
    this.socket = socket;
    this.event = event;
    this.onLayout = onLayout;
    this.onState = onState;
    this.pc = null;
    this.mode = null; // 'viewer' | 'publisher' while connected or connecting
    this.stream = null; // own camera and microphone while publishing
    this.layout = [];
    this.config = null;
    this._timer = null;
    this._handlers = {
      th_media_layout: (layout) => {
        if (this.event && layout.event !== this.event) return;
        this.layout = layout.slots || [];
        this._applyLayout();
      },
      th_audio_only: () => onAudioOnly(),
      th_media_end: () => {
        this.close();
        onEnd();
      },
    };
    for (const [name, handler] of Object.entries(this._handlers)) socket.on(name, handler);
    window.sprechstundeMedia = this; // what the browser tests read their getStats() from
  }

  /** Offer (again): as a publisher of `stream` (camera and microphone), or as a viewer without one. */
  async connect(stream = null) {
    this._closePc();
    const mode = stream ? 'publisher' : 'viewer';
    this.mode = mode;
    this.stream = stream;
    this.onState('connecting');
    if (!this.config) {
      this.config = await ask(this.socket, 'th_media_config').catch(() => ({ ice_servers: [] }));
    }
    const pc = new RTCPeerConnection({ iceServers: this.config.ice_servers || [], bundlePolicy: 'max-bundle' });
    this.pc = pc;
    let pairs = PAIRS;
    if (stream) {
      // Own media first, as a sendrecv pair (it shows another publisher too); no camera: the pair without a track.
      const mic = stream.getAudioTracks()[0];
      const camera = stream.getVideoTracks()[0];
      onlyOurCodecs(pc.addTransceiver(mic || 'audio', { direction: 'sendrecv', streams: [stream] }), 'audio');
      onlyOurCodecs(pc.addTransceiver(camera || 'video', { direction: 'sendrecv', streams: [stream] }), 'video');
      pairs -= 1;
    }
    for (let i = 0; i < pairs; i++) {
      onlyOurCodecs(pc.addTransceiver('audio', { direction: 'recvonly' }), 'audio');
      onlyOurCodecs(pc.addTransceiver('video', { direction: 'recvonly' }), 'video');
    }
    pc.addEventListener('connectionstatechange', () => this._connectionChanged(pc));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (this.pc !== pc) return null; // superseded meanwhile
    const payload = { sdp: pc.localDescription.sdp };
    if (this.event) payload.event = this.event;
    let ack;
    try {
      ack = await ask(this.socket, 'th_media_offer', payload);
    } catch (error) {
      if (this.pc === pc) {
        this._closePc();
        this.mode = null;
      }
      throw error;
    }
    if (this.pc !== pc) return null;
    await pc.setRemoteDescription({ type: 'answer', sdp: ack.sdp });
    this._timer = setTimeout(() => {
      if (this.pc === pc && pc.connectionState !== 'connected') this.onState('failed');
    }, CONNECT_TIMEOUT_MS);
    this._applyLayout(); // the layout came before the answer
    return ack;
  }

  _connectionChanged(pc) {
    if (this.pc !== pc) return;
    const state = pc.connectionState;
    if (state === 'connected') {
      clearTimeout(this._timer);
      this.onState('connected');
    } else if (state === 'failed') {
      this.onState('failed');
    } else if (state === 'disconnected') {
      this.onState('connecting');
    }
  }

  _track(mid) {
    if (!this.pc || mid === null || mid === undefined) return null;
    return this.pc.getTransceivers().find((tr) => tr.mid === String(mid))?.receiver.track ?? null;
  }

  _applyLayout() {
    if (!this.pc?.remoteDescription) return;
    this.onLayout(this.layout.map((slot) => ({ ...slot, audio: this._track(slot.audio_mid), video: this._track(slot.video_mid) })));
  }

  /** Close the connection; tell the server unless it closed the stage itself. Own media is kept. */
  async leave({ tell = true } = {}) {
    const had = this.pc !== null;
    this.close();
    if (tell && had) await ask(this.socket, 'th_media_leave').catch(() => {});
  }

  /** Close the connection without a word to the server (it knows: it ended the stage, or we re-offer). */
  close() {
    this._closePc();
    this.mode = null;
    this.layout = [];
    this.onLayout([]);
  }

  _closePc() {
    clearTimeout(this._timer);
    if (!this.pc) return;
    const pc = this.pc;
    this.pc = null;
    pc.close();
    this.onState('closed');
  }

  dispose() {
    this.close();
    for (const [name, handler] of Object.entries(this._handlers)) this.socket.off(name, handler);
    if (window.sprechstundeMedia === this) window.sprechstundeMedia = null;
  }
}

// -- the tiles --------------------------------------------------------------------------------------

const ROLE_ORDER = { politician: 0, moderator: 1, guest: 2 };

/** The name on a publisher's tile: a guest from the audience has none ("Gast"). */
export function publisherName(slot) {
  return slot.name || t('th.stage.guest');
}

function roleLabel(role) {
  const key = `th.stage.role.${role}`;
  const text = t(key);
  return text === key ? '' : text;
}

function makeTile(kind) {
  const video = h('video', { class: 'tile__video', autoplay: true, playsinline: true });
  const placeholder = h('p', { class: 'tile__placeholder' });
  const name = h('span', { class: 'tile__name' });
  const role = h('span', { class: 'th-tile__role' });
  const element = h('figure', { class: `tile th-tile th-tile--${kind} tile--off` }, video, placeholder,
    h('figcaption', { class: 'tile__caption' }, name, role));
  return { element, video, placeholder, name, role, slot: null, stream: null };
}

/**
 * The stage's tiles inside `container`: the politician (or else the first publisher) large, the others
 * small, and, while this page publishes, its own picture. Returns `{setSlots, setSelf, setAudioOnly, clear}`.
 * `emptyText` is shown while nobody publishes; `soundButton` (optional) is shown when the browser
 * blocked sound until a click.
 */
export function createStageView(container, { emptyText = '', soundButton = null } = {}) {
  const empty = h('p', { class: 'th-stage-video__placeholder' }, emptyText);
  const main = h('div', { class: 'th-stage__main' });
  const side = h('div', { class: 'th-stage__side' });
  container.replaceChildren(empty, main, side);
  container.classList.add('th-stage');
  const tiles = new Map(); // participant -> tile
  const self = makeTile('self');
  self.video.muted = true; // never our own sound back
  self.name.textContent = t('th.stage.you');
  let audioOnly = false;

  const needsClick = () => {
    if (soundButton) soundButton.hidden = false;
  };
  soundButton?.addEventListener('click', () => {
    for (const tile of tiles.values()) {
      tile.video.muted = false;
      play(tile.video);
    }
    soundButton.hidden = true;
  });

  function picture(tile) {
    const slot = tile.slot;
    if (!slot) return;
    const live = !audioOnly && slot.video && !slot.video.muted && tile.video.videoWidth > 0;
    tile.element.classList.toggle('tile--off', !live);
    const name = publisherName(slot);
    tile.placeholder.textContent = audioOnly ? t('media.audio_only_tile', { name }) : live ? '' : t('media.waiting_for_picture', { name });
  }

  function fill(tile, slot) {
    tile.slot = slot;
    tile.element.dataset.participant = slot.participant;
    tile.element.dataset.role = slot.role || '';
    tile.element.dataset.videoMid = slot.video_mid ?? '';
    tile.name.textContent = publisherName(slot);
    tile.role.textContent = roleLabel(slot.role);
    const tracks = [slot.audio, slot.video].filter(Boolean);
    const current = tile.stream?.getTracks() ?? [];
    if (tracks.length !== current.length || tracks.some((track) => !current.includes(track))) {
      tile.stream = new MediaStream(tracks);
      tile.video.srcObject = tile.stream;
      if (soundButton && !soundButton.hidden) tile.video.muted = true; // sound stays off until the click
      play(tile.video, needsClick);
    }
    for (const track of tracks) {
      if (track.sps_watched) continue;
      track.sps_watched = true;
      track.addEventListener('mute', () => tiles.forEach(picture));
      track.addEventListener('unmute', () => tiles.forEach(picture));
    }
    picture(tile);
  }

  function setSlots(slots) {
    const ordered = [...slots].sort((a, b) => (ROLE_ORDER[a.role] ?? 3) - (ROLE_ORDER[b.role] ?? 3));
    const seen = new Set();
    const mainTiles = [];
    const sideTiles = [];
    ordered.forEach((slot, i) => {
      seen.add(slot.participant);
      let tile = tiles.get(slot.participant);
      if (!tile) {
        tile = makeTile('remote');
        for (const type of ['resize', 'playing', 'emptied']) tile.video.addEventListener(type, () => picture(tile));
        tiles.set(slot.participant, tile);
      }
      fill(tile, slot);
      tile.element.classList.toggle('th-tile--main', i === 0);
      (i === 0 ? mainTiles : sideTiles).push(tile.element);
    });
    for (const [participant, tile] of tiles) {
      if (seen.has(participant)) continue;
      tile.video.srcObject = null;
      tiles.delete(participant);
    }
    if (self.stream) sideTiles.push(self.element);
    main.replaceChildren(...mainTiles);
    side.replaceChildren(...sideTiles);
    main.hidden = !mainTiles.length;
    side.hidden = !sideTiles.length;
    empty.hidden = Boolean(mainTiles.length || sideTiles.length);
  }

  function setSelf(stream) {
    const camera = stream?.getVideoTracks()[0] ?? null;
    self.stream = stream || null;
    self.video.srcObject = camera ? new MediaStream([camera]) : null;
    self.element.classList.toggle('tile--off', !camera);
    self.placeholder.textContent = camera ? '' : t('media.no_camera');
    if (camera) play(self.video);
    setSlots([...tiles.values()].map((tile) => tile.slot));
  }

  return {
    setSlots,
    setSelf,
    setAudioOnly(value) {
      audioOnly = value;
      tiles.forEach(picture);
    },
    clear() {
      audioOnly = false;
      setSelf(null);
      setSlots([]);
      if (soundButton) soundButton.hidden = true;
    },
  };
}

/** What to tell a person when the stage refused or failed (`media_busy`, `no_media`, or a protocol error). */
export function stageProblem(error, errorMessage) {
  if (error?.code === 'media_busy') return t('th.stage.busy');
  if (error?.code === 'no_media') return t('th.stage.no_media');
  return errorMessage(error);
}

// -- staff: the politician's and the moderators' own camera ----------------------------------------

/**
 * The presenter's and moderators' stage panel: a button that publishes their camera and microphone while
 * the event is live, their own picture and the other publishers (a guest on stage). Elements: `button`,
 * `status` (role=status), `container` (the tiles), `soundButton`, `hint` (shown before the event), `panel`
 * (all of it: hidden after the event).
 * `errorMessage` maps protocol errors.
 * Returns `{update(event), reconnected(), disconnected()}`: call `update` with every event state.
 */
export function createStaffStage(socket, eventId, { button, status, container, soundButton, hint = null, panel = null, errorMessage }) {
  const view = createStageView(container, { emptyText: '', soundButton });
  let camera = null;
  let live = false;
  let ended = false;
  let busy = false;
  let watching = false; // the socket is connected and watches the event: offers can go out
  const say = (text) => {
    if (status.textContent !== text) status.textContent = text;
  };
  const stage = new StageConnection(socket, {
    event: eventId,
    onLayout: (slots) => view.setSlots(slots),
    onState: (state) => {
      if (state === 'failed') say(t('th.stage.failed'));
      else if (state === 'connected' && camera) say(t('th.cam.on_air'));
    },
    onEnd: () => stop(false),
  });

  function render() {
    button.hidden = !live;
    if (hint) hint.hidden = live || ended;
    if (panel) panel.hidden = ended;
    button.disabled = busy || !watching;
    button.textContent = camera ? t('th.cam.off') : t('th.cam.on');
    button.classList.toggle('button--primary', !camera);
    container.hidden = !camera;
  }

  async function stop(tell = true) {
    await stage.leave({ tell });
    stopStream(camera);
    camera = null;
    view.clear();
    render();
  }

  async function start() {
    busy = true;
    render();
    say(t('th.check.running'));
    let local;
    try {
      local = await openLocalMedia('full');
    } catch (error) {
      say(t(`media.problem.${error.code}`));
      busy = false;
      render();
      return;
    }
    camera = local.stream;
    view.setSelf(camera);
    render();
    try {
      await stage.connect(camera);
      say(local.missing === 'camera' ? t('media.problem.no_camera_fallback') : t('th.cam.on_air'));
    } catch (error) {
      await stop(false);
      say(stageProblem(error, errorMessage));
    } finally {
      busy = false;
      render();
    }
  }

  button.addEventListener('click', async () => {
    if (busy) return;
    if (camera) {
      await stop();
      say(t('th.cam.stopped'));
    } else {
      await start();
    }
  });

  render();
  return {
    update(event) {
      live = event.state === 'live';
      ended = event.state === 'ended';
      if (!live && camera) stop(event.state !== 'ended');
      if (!live && status.textContent === t('th.cam.on_air')) say('');
      render();
    },
    /** The socket watches the event (again): offers may go out. After a reconnect the server has forgotten
     * the old socket's stage connection: offer again. */
    async reconnected() {
      watching = true;
      render();
      if (!camera || !live) return;
      try {
        await stage.connect(camera);
      } catch (error) {
        say(stageProblem(error, errorMessage));
        await stop(false);
      }
    },
    disconnected() {
      watching = false;
      stage.close();
      render();
    },
  };
}

