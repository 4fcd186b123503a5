// Estimated wait: a mirror of server/queue/estimate.py (estimate_wait and _round_minutes), plus the
// decoding of the compact `queue` update described in docs/protocol.md. Keep the two in step: a
// browser test pins this file to the Python table.

/** Round minutes to steps that do not pretend precision: whole minutes up to 10, 5 up to 60, then 15. */
export function roundMinutes(minutes) {
  if (minutes <= 10) return Math.max(0, Math.ceil(minutes));
  const step = minutes <= 60 ? 5 : 15;
  return Math.ceil(minutes / step) * step;
}

/**
 * Range [low, high] in minutes until the citizen at `position` is called, or null with no clerk.
 * `clerks` counts available plus busy clerks; `serviceSeconds` is the typical consultation length.
 */
export function estimateWait(position, clerks, serviceSeconds) {
  if (clerks <= 0) return null;
  if (position <= 0) return [0, 0];
  const minutes = serviceSeconds / 60;
  const central = ((position - 1) / clerks + 0.5) * minutes;
  return [roundMinutes(central * 0.75), roundMinutes(central * 1.25 + 1)];
}

/** The arrival seqs of the waiting tickets from the delta-encoded `w` of a `queue` update. */
export function decodeWaiting(w) {
  const seqs = new Array(w.length);
  let seq = 0;
  for (let i = 0; i < w.length; i++) {
    seq = i === 0 ? w[0] : seq + w[i];
    seqs[i] = seq;
  }
  return seqs;
}

/** 1-based position of `seq` in a `queue` update's `w`, or null when it is not waiting there. */
export function positionIn(w, seq) {
  const index = decodeWaiting(w).indexOf(seq);
  return index === -1 ? null : index + 1;
}
