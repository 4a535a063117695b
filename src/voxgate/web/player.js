// Plays audio files (WAV from the server) one after the other, never overlapping, on one
// AudioContext created by a user gesture (so autoplay rules allow it).

export class AudioQueue {
  constructor({ onEnded } = {}) {
    this.ctx = null;
    this.nextStart = 0;
    this.onEnded = onEnded || (() => {});
  }

  /** Create/resume the context; call from a click handler. */
  async unlock() {
    if (!this.ctx) this.ctx = new AudioContext();
    if (this.ctx.state === "suspended") await this.ctx.resume();
  }

  /** Decode `bytes` (ArrayBuffer of a WAV) and queue it; resolves when it has finished playing. */
  async play(bytes) {
    await this.unlock();
    const buffer = await this.ctx.decodeAudioData(bytes.slice(0));
    const node = this.ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.ctx.destination);
    const start = Math.max(this.ctx.currentTime, this.nextStart);
    this.nextStart = start + buffer.duration;
    const ended = new Promise((resolve) => { node.onended = resolve; });
    node.start(start);
    await ended;
    this.onEnded(buffer.duration);
    return buffer.duration;
  }
}

/**
 * Plays a stream of raw PCM16 chunks (the agent's voice) back to back, as they arrive, and can
 * drop everything queued at once (barge-in: the server says the user is speaking over it).
 * Chunks are scheduled on one AudioContext; `stop()` silences what is playing and forgets what
 * is scheduled, so the next chunk starts a fresh run.
 */
export class PcmStream {
  constructor({ onIdle } = {}) {
    this.ctx = null;
    this.nextStart = 0;
    this.sources = new Set();
    this.onIdle = onIdle || (() => {});
    this.stats = { chunks: 0, chunksPlayed: 0, secondsQueued: 0, secondsPlayed: 0, stops: 0 };
  }

  /** Create/resume the context; call from a click handler (autoplay rules). */
  unlock() {
    if (!this.ctx) this.ctx = new AudioContext();
    // resume() settles only once the output device runs: never wait on it (a page must not
    // hang on a slow or absent audio device); chunks are scheduled on the context's clock.
    if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
  }

  /** True while some chunk is playing or scheduled. */
  get playing() { return this.sources.size > 0; }

  /** Queue one chunk: `bytes` is little-endian Int16 mono PCM at `sampleRate`. */
  push(bytes, sampleRate) {
    this.unlock();
    const pcm = new Int16Array(bytes, 0, Math.floor(bytes.byteLength / 2));
    if (pcm.length === 0) return;
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 0x8000;
    const buffer = this.ctx.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const node = this.ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(this.ctx.destination);
    // after a gap (first chunk, or the network was late) start a little ahead, not in the past
    const start = Math.max(this.ctx.currentTime + 0.03, this.nextStart);
    this.nextStart = start + buffer.duration;
    this.sources.add(node);
    this.stats.chunks += 1;
    this.stats.secondsQueued += buffer.duration;
    node.onended = () => {
      this.sources.delete(node);
      this.stats.chunksPlayed += 1;
      this.stats.secondsPlayed += buffer.duration;
      if (this.sources.size === 0) this.onIdle();
    };
    node.start(start);
  }

  /** Silence now: stop the chunk playing, drop every scheduled one. */
  stop() {
    if (this.sources.size > 0) this.stats.stops += 1;
    for (const node of this.sources) {
      node.onended = null;
      try { node.stop(); } catch { /* not started yet */ }
      node.disconnect();
    }
    this.sources.clear();
    this.nextStart = 0;
  }
}
