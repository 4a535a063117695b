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
