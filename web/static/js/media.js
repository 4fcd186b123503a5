// The browser side of the media protocol (docs/protocol.md, "Media"): one RTCPeerConnection to the
// server, offered by us with fixed slots (own audio+video as the first pair, one recvonly pair for a
// second remote), so that people joining and leaving never need a renegotiation.

import { chime } from './common.js';

const ACK_TIMEOUT_MS = 15000;
const GATHER_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 10000;
const EXTRA_PAIRS = 1; // counterpart in the first pair, one interpreter or colleague in the second

export class MediaError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** Emit a socket.io event and resolve to its acknowledgement; reject with a MediaError. */
export function ask(socket, event, payload) {
  return new Promise((resolve, reject) => {
    if (!socket?.connected) {
      reject(new MediaError('network'));
      return;
    }
    const done = (err, ack) => {
      if (err) reject(new MediaError('network'));
      else if (ack?.error) reject(new MediaError(ack.error.code || 'generic', ack.error.message));
      else resolve(ack || {});
    };
    if (payload === undefined) socket.timeout(ACK_TIMEOUT_MS).emit(event, done);
    else socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, done);
  });
}

// -- own camera and microphone ----------------------------------------------------------------------

/** How a person takes part: `full` (camera and microphone), `nocam` (microphone only), `audio`
 * (microphone only, and no video shown either: the lightest on a weak connection). */
export const MODES = ['full', 'nocam', 'audio'];
const MODE_KEY = 'sps_media_mode';

export function storedMode() {
  try {
    const mode = sessionStorage.getItem(MODE_KEY);
    return MODES.includes(mode) ? mode : 'full';
  } catch {
    return 'full';
  }
}

export function storeMode(mode) {
  try {
    sessionStorage.setItem(MODE_KEY, mode);
  } catch {
    /* storage disabled: the choice lasts for this page */
  }
}

/** Why getUserMedia failed, as one of: denied, not_found, in_use, unsupported. */
function accessProblem(error) {
  switch (error?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'denied';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'not_found';
    case 'NotReadableError':
    case 'AbortError':
      return 'in_use';
    default:
      return 'unsupported';
  }
}

/**
 * Open the microphone (and the camera in `full` mode). Resolves to `{stream, missing}` where
 * `missing` is `'camera'` when a camera was asked for but none could be used and the microphone
 * alone works. Rejects with a MediaError whose code is denied / not_found / in_use / unsupported.
 */
export async function openLocalMedia(mode) {
  if (!navigator.mediaDevices?.getUserMedia) throw new MediaError('unsupported');
  const audio = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio, video: mode === 'full' ? video : false });
    return { stream, missing: null };
  } catch (error) {
    const problem = accessProblem(error);
    if (mode === 'full' && problem !== 'denied') {
      // No usable camera: a consultation by voice is still a consultation.
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
        return { stream, missing: 'camera' };
      } catch (second) {
        throw new MediaError(accessProblem(second));
      }
    }
    throw new MediaError(problem);
  }
}

export function stopStream(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

// -- the peer connection ----------------------------------------------------------------------------

function preferVp8(transceiver) {
  const capabilities = window.RTCRtpReceiver?.getCapabilities?.('video');
  if (!capabilities || typeof transceiver.setCodecPreferences !== 'function') return;
  const rank = (codec) => (/vp8/i.test(codec.mimeType) ? 0 : /rtx|red|ulpfec/i.test(codec.mimeType) ? 2 : 1);
  const codecs = [...capabilities.codecs].sort((a, b) => rank(a) - rank(b));
  try {
    transceiver.setCodecPreferences(codecs);
  } catch {
    /* an older browser: the server insists on VP8 and says `no_media` if it is missing */
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * One connection to the server. `onLayout(slots, room)` with the `media_layout` slots resolved to
 * tracks, `onState(state, detail)` with connecting / connected / failed / closed.
 */
export class MediaSession {
  constructor(socket, { onLayout = () => {}, onState = () => {} } = {}) {
    this.socket = socket;
    this.onLayout = onLayout;
    this.onState = onState;
    this.pc = null;
    this.stream = null;
    this.audioSender = null;
    this.videoSender = null;
    this.cameraTrack = null;
    this.screenTrack = null;
    this.micOn = true;
    this.cameraOn = true;
    this.room = null;
    this.layout = { room: null, slots: [] };
    this.config = null;
    this.payload = null;
    this.closed = false;
    this._timer = null;
    this._onLayoutEvent = (layout) => this._applyLayout(layout);
    socket.on('media_layout', this._onLayoutEvent);
    window.sprechstundeMedia = this;
  }

  /** Offer (again): `payload` is `{check: true}`, `{}` or `{ticket}` as in the protocol. */
  async connect(payload = {}) {
    this.payload = payload;
    this.closed = false;
    this._closePc();
    this.onState('connecting');
    if (!this.config) {
      this.config = await ask(this.socket, 'media_config').catch(() => ({ ice_servers: [], max_video_bitrate: 0 }));
    }
    const pc = new RTCPeerConnection({ iceServers: this.config.ice_servers || [], bundlePolicy: 'max-bundle' });
    this.pc = pc;
    const audio = pc.addTransceiver('audio', { direction: 'sendrecv' });
    const video = pc.addTransceiver('video', { direction: 'sendrecv' });
    this.audioSender = audio.sender;
    this.videoSender = video.sender;
    preferVp8(video);
    for (let i = 0; i < EXTRA_PAIRS; i++) {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      preferVp8(pc.addTransceiver('video', { direction: 'recvonly' }));
    }
    await this._attachTracks();
    pc.addEventListener('connectionstatechange', () => this._connectionChanged(pc));

    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (this.pc !== pc) return null; // superseded meanwhile
    let ack;
    try {
      ack = await ask(this.socket, 'media_offer', { ...payload, sdp: pc.localDescription.sdp });
    } catch (error) {
      if (this.pc === pc) this._closePc();
      throw error;
    }
    if (this.pc !== pc) return null;
    await pc.setRemoteDescription({ type: 'answer', sdp: ack.sdp });
    this.room = ack.room;
    await this._capBitrate();
    this._timer = setTimeout(() => {
      if (this.pc === pc && pc.connectionState !== 'connected') this.onState('failed', 'timeout');
    }, CONNECT_TIMEOUT_MS);
    this._applyLayout(this.layout);
    return ack;
  }

  _connectionChanged(pc) {
    if (this.pc !== pc) return;
    const state = pc.connectionState;
    if (state === 'connected') {
      clearTimeout(this._timer);
      this.onState('connected');
    } else if (state === 'failed') {
      this.onState('failed', 'ice');
    } else if (state === 'disconnected') {
      this.onState('connecting');
    }
  }

  async _capBitrate() {
    const max = this.config?.max_video_bitrate;
    if (!max || !this.videoSender) return;
    try {
      const parameters = this.videoSender.getParameters();
      if (!parameters.encodings?.length) parameters.encodings = [{}];
      parameters.encodings[0].maxBitrate = max;
      await this.videoSender.setParameters(parameters);
    } catch {
      /* not fatal: the server copes, the cap only protects the one-to-many case */
    }
  }

  /** Use `stream` as own media (replaceTrack: no renegotiation, also before connecting). */
  async setStream(stream) {
    this.stream = stream;
    this.cameraTrack = stream?.getVideoTracks()[0] ?? null;
    await this._attachTracks();
  }

  async _attachTracks() {
    const mic = this.stream?.getAudioTracks()[0] ?? null;
    if (mic) mic.enabled = this.micOn;
    if (this.cameraTrack) this.cameraTrack.enabled = this.cameraOn;
    const pc = this.pc;
    if (!pc) return;
    try {
      await this.audioSender.replaceTrack(mic);
      await this.videoSender.replaceTrack(this.screenTrack || this.cameraTrack);
    } catch (error) {
      if (this.pc === pc) throw error; // a closed connection needs no tracks
    }
  }

  setMic(on) {
    this.micOn = on;
    for (const track of this.stream?.getAudioTracks() ?? []) track.enabled = on;
  }

  setCamera(on) {
    this.cameraOn = on;
    if (this.cameraTrack) this.cameraTrack.enabled = on;
  }

  /** Send the screen instead of the camera until the share ends. Resolves to the screen track. */
  async shareScreen(onEnded) {
    const display = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    const track = display.getVideoTracks()[0];
    track.contentHint = 'detail';
    this.screenTrack = track;
    track.addEventListener('ended', () => {
      if (this.screenTrack === track) this.stopShare().then(onEnded);
    });
    if (this.pc) await this.videoSender.replaceTrack(track);
    return track;
  }

  async stopShare() {
    const track = this.screenTrack;
    this.screenTrack = null;
    track?.stop();
    if (this.pc) await this.videoSender.replaceTrack(this.cameraTrack).catch(() => {});
  }

  /** The receivers of a slot, found by mid. */
  receiverFor(mid) {
    if (!this.pc || mid === null || mid === undefined) return null;
    return this.pc.getTransceivers().find((t) => t.mid === String(mid))?.receiver ?? null;
  }

  /** All receiving video transceivers' tracks, own pair first. */
  videoReceivers() {
    return this.pc?.getTransceivers().filter((t) => t.receiver.track.kind === 'video').map((t) => t.receiver) ?? [];
  }

  _applyLayout(layout) {
    this.layout = layout || { room: null, slots: [] };
    if (!this.pc || !this.pc.remoteDescription) return;
    const slots = (this.layout.slots || []).map((slot) => ({
      ...slot,
      audio: this.receiverFor(slot.audio_mid)?.track ?? null,
      video: this.receiverFor(slot.video_mid)?.track ?? null,
    }));
    this.onLayout(slots, this.layout.room);
  }

  /** Quality of each slot from getStats(): {mid -> {loss, rtt, kbps, fps, frames, packets}}. */
  async inbound() {
    if (!this.pc) return { byMid: {}, rtt: null, connection: null };
    const pc = this.pc;
    const report = await pc.getStats();
    const byMid = {};
    let rtt = null;
    report.forEach((entry) => {
      if (entry.type === 'inbound-rtp' && entry.mid !== undefined) {
        byMid[entry.mid] = {
          kind: entry.kind,
          packets: entry.packetsReceived ?? 0,
          lost: Math.max(0, entry.packetsLost ?? 0),
          bytes: entry.bytesReceived ?? 0,
          frames: entry.framesDecoded ?? 0,
          fps: entry.framesPerSecond ?? null,
        };
      } else if (entry.type === 'candidate-pair' && entry.nominated && entry.state === 'succeeded') {
        if (entry.currentRoundTripTime !== undefined) rtt = entry.currentRoundTripTime;
      }
    });
    return { byMid, rtt, at: performance.now(), connection: pc };
  }

  /** Leave: tell the server (unless it ended the media itself) and close the connection. */
  async leave({ tell = true } = {}) {
    const had = this.pc !== null;
    this.closed = true;
    this._closePc();
    if (tell && had) await ask(this.socket, 'media_leave').catch(() => {});
  }

  /** Stop everything, including own camera and microphone. */
  async dispose({ tell = true } = {}) {
    await this.leave({ tell });
    await this.stopShare();
    stopStream(this.stream);
    this.stream = null;
    this.cameraTrack = null;
    this.socket.off('media_layout', this._onLayoutEvent);
    if (window.sprechstundeMedia === this) window.sprechstundeMedia = null;
  }

  _closePc() {
    clearTimeout(this._timer);
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      this.room = null;
      pc.close();
      this.onState('closed');
    }
  }
}

// -- quality ----------------------------------------------------------------------------------------

/**
 * good / fair / poor / none from two inbound() samples for one slot's mids. `expectVideo` says
 * whether frames should arrive (a remote with camera).
 */
export function rateQuality(before, after, mids, expectVideo) {
  if (!before || !after) return { level: 'unknown' };
  const seconds = Math.max(0.001, (after.at - before.at) / 1000);
  let packets = 0;
  let lost = 0;
  let bytes = 0;
  let frames = 0;
  for (const mid of mids) {
    const a = before.byMid[mid];
    const b = after.byMid[mid];
    if (!a || !b) continue;
    packets += b.packets - a.packets;
    lost += b.lost - a.lost;
    bytes += b.bytes - a.bytes;
    if (b.kind === 'video') frames += b.frames - a.frames;
  }
  const loss = packets + lost > 0 ? lost / (packets + lost) : 0;
  const kbps = (bytes * 8) / seconds / 1000;
  const fps = frames / seconds;
  const rtt = after.rtt;
  if (packets === 0) return { level: 'none', loss, kbps, fps, rtt };
  let level = 'good';
  if (loss >= 0.03 || (rtt !== null && rtt >= 0.3) || (expectVideo && fps > 0 && fps < 12)) level = 'fair';
  if (loss >= 0.1 || (rtt !== null && rtt >= 0.8) || (expectVideo && fps < 4)) level = 'poor';
  return { level, loss, kbps, fps, rtt };
}

// -- playing ------------------------------------------------------------------------------------------

/**
 * Play a media element; if the browser refuses sound without a click, play muted and call
 * `needsClick()` so that the page can offer a "turn sound on" button.
 */
export async function play(element, needsClick = () => {}) {
  try {
    await element.play();
  } catch (error) {
    if (error?.name !== 'NotAllowedError' || element.muted) return;
    element.muted = true;
    try {
      await element.play();
    } catch {
      return;
    }
    needsClick(element);
  }
}

/** A microphone's loudness on the meter's 0..1 scale: decibels from -60 dBFS (silence, 0) to -10 dBFS
 * (1), so that speech at a normal distance (about -45 to -20 dBFS) fills the middle of the bar. A linear
 * scale left it near zero. */
export function levelFromRms(rms) {
  if (!(rms > 0)) return 0;
  const db = 20 * Math.log10(rms);
  return Math.min(1, Math.max(0, (db + 60) / 50));
}

export const HEARD_LEVEL = 0.35; // about -42 dBFS: a quiet voice, well above a quiet room
const HEARD_FRAMES = 4; // measurements above it ...
const HEARD_WINDOW_MS = 2000; // ... within this long: a voice, not one click or bump

/** Whether we really hear someone: `(level, at) => boolean`, true once the level was above HEARD_LEVEL in
 * HEARD_FRAMES measurements within HEARD_WINDOW_MS (and from then on). */
export function voiceDetector() {
  const loud = [];
  let heard = false;
  return (level, at) => {
    if (heard) return true;
    if (level < HEARD_LEVEL) return false;
    loud.push(at);
    while (loud.length && loud[0] < at - HEARD_WINDOW_MS) loud.shift();
    heard = loud.length >= HEARD_FRAMES;
    return heard;
  };
}

/**
 * The level of a microphone track, measured with an AnalyserNode: `onLevel(shown, heard)` per animation
 * frame, where `shown` (0..1) rises at once and falls slowly (readable on a meter) and `heard` says
 * whether a voice really arrived (voiceDetector). `stop()` ends the meter.
 */
export function micLevel(track, onLevel) {
  const AudioContextClass = window.AudioContext || window.webkitAudioContext;
  if (!AudioContextClass || !track) return { stop() {} };
  const context = new AudioContextClass();
  const source = context.createMediaStreamSource(new MediaStream([track]));
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  // The graph is only pulled when it ends at the destination (some browsers feed an unconnected analyser
  // silence): through a gain of zero, so nothing is heard.
  const sink = context.createGain();
  sink.gain.value = 0;
  source.connect(analyser);
  analyser.connect(sink);
  sink.connect(context.destination);
  const samples = new Float32Array(analyser.fftSize);
  const detect = voiceDetector();
  let shown = 0;
  let last = performance.now();
  let frame = 0;
  const tick = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const value of samples) sum += value * value;
    const level = levelFromRms(Math.sqrt(sum / samples.length));
    const now = performance.now();
    shown = Math.max(level, shown - ((now - last) / 1000) * 1.5); // falls over about 0.7 s
    last = now;
    onLevel(shown, detect(level, now));
    frame = requestAnimationFrame(tick);
  };
  if (context.state === 'suspended') context.resume().catch(() => {});
  tick();
  return {
    stop() {
      cancelAnimationFrame(frame);
      source.disconnect();
      analyser.disconnect();
      context.close().catch(() => {});
    },
  };
}

/** A short test tone for the speakers (three rising notes, gentle). */
export function testTone() {
  chime([523, 659, 784]);
}
