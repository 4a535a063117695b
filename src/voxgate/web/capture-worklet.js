// AudioWorklet processor: microphone samples (Float32, the context's rate, downmixed to mono by
// the node's channelCount) -> little-endian Int16 PCM frames of `frameSamples` samples, posted
// to the main thread as transferable ArrayBuffers. Runs on the audio thread: no allocation per
// 128-sample block beyond the finished frame.

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const wanted = options.processorOptions && options.processorOptions.frameSamples;
    this.frameSamples = Math.max(128, Math.floor(wanted || 1920));
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.emit();  // the partly filled last frame: the end of speech must not be lost
        this.port.postMessage({ type: "flushed" });
      } else if (event.data === "stop") {
        this.running = false;
      }
    };
  }

  emit() {
    if (this.filled === 0) return;
    const out = this.frame.slice(0, this.filled);
    this.port.postMessage({ type: "pcm", buffer: out.buffer }, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const samples = input[0];
      for (let i = 0; i < samples.length; i++) {
        const s = Math.max(-1, Math.min(1, samples[i]));
        this.frame[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
        if (this.filled === this.frameSamples) this.emit();
      }
    }
    return this.running;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
