// Microphone capture shared by every live tool: getUserMedia -> AudioWorklet -> Int16 PCM frames.
// The AudioContext asks for 48 kHz (the rate the server's doors expect from a browser); the real
// rate is reported in `sampleRate`, so a browser that refuses 48 kHz still sends correct config.

export class MicError extends Error {}

const MIC_MESSAGES = {
  NotAllowedError: "Microphone access was denied. Allow the microphone for this site in the " +
    "browser's site settings, then press Start again.",
  SecurityError: "Microphone access is blocked here: open the page over https or from localhost.",
  NotFoundError: "No microphone was found. Connect one and press Start again.",
  NotReadableError: "The microphone is in use by another program or could not be opened.",
  OverconstrainedError: "The microphone cannot deliver mono audio as requested.",
};

/** A user-facing message for a getUserMedia / AudioContext failure. */
export function micErrorMessage(err) {
  return MIC_MESSAGES[err && err.name] ||
    `The microphone could not be started: ${err && err.message ? err.message : err}`;
}

export class MicCapture {
  constructor({ sampleRate = 48000, frameMs = 40, onFrame }) {
    this.wantedRate = sampleRate;
    this.frameMs = frameMs;
    this.onFrame = onFrame;
    this.ctx = null;
    this.stream = null;
    this.node = null;
  }

  get sampleRate() { return this.ctx ? this.ctx.sampleRate : this.wantedRate; }

  /** Ask for the microphone and start posting frames to onFrame(ArrayBuffer). */
  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new MicError("This browser cannot capture audio here (it needs https or localhost " +
        "and a current Chrome, Edge or Firefox).");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false,
                 autoGainControl: false },
      });
      this.ctx = new AudioContext({ sampleRate: this.wantedRate });
      await this.ctx.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    } catch (err) {
      await this.stop();
      throw new MicError(micErrorMessage(err));
    }
    const source = this.ctx.createMediaStreamSource(this.stream);
    const frameSamples = Math.round(this.ctx.sampleRate * this.frameMs / 1000);
    this.node = new AudioWorkletNode(this.ctx, "pcm16-capture", {
      numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { frameSamples },
    });
    this.flushed = null;
    this.node.port.onmessage = (event) => {
      if (event.data.type === "pcm") this.onFrame(event.data.buffer);
      else if (event.data.type === "flushed" && this.flushed) this.flushed();
    };
    source.connect(this.node);
    await this.ctx.resume();
  }

  /** Stop capturing; the partly filled last frame is delivered first. */
  async stop() {
    if (this.node) {
      const done = new Promise((resolve) => { this.flushed = resolve; });
      this.node.port.postMessage("flush");
      await Promise.race([done, new Promise((r) => setTimeout(r, 500))]);
      this.node.port.postMessage("stop");
      this.node.disconnect();
      this.node = null;
    }
    if (this.stream) {
      this.stream.getTracks().forEach((track) => track.stop());
      this.stream = null;
    }
    if (this.ctx) {
      await this.ctx.close().catch(() => {});
      this.ctx = null;
    }
  }
}
