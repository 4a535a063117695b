// Translate tab: microphone -> /ws/translate -> a log of source + translated text, and the
// translated speech played as each utterance's WAV arrives.
//
// Wire (docs/protocol.md): first a JSON config {mode, src, tgt, sample_rate, channels}; then
// binary Int16 PCM frames; "__flush__" ends the utterance now. Per utterance the server sends a
// JSON result {src, tgt, text, transcript, tts_failed?} followed by one binary WAV (none when
// tts_failed), and {type: "error", code, message} before any close that is not normal.

import { closeMessage, socketUrl } from "./console.js";
import { MicCapture, MicError } from "./mic.js";
import { AudioQueue } from "./player.js";

const LANG_NAMES = { en: "English", ru: "Russian" };
const MAX_QUEUED_FRAMES = 250;  // ~10 s of audio held while the socket opens
const QUIET_AFTER_RESULT_MS = 3000;  // after Stop: close once the last answer has settled
const QUIET_WITHOUT_RESULT_MS = 45000;  // after Stop: longest wait for an utterance in flight

const $ = (id) => document.getElementById(id);
const ui = {
  mode: $("translate-mode"),
  start: $("translate-start"),
  stop: $("translate-stop"),
  status: $("translate-status"),
  error: $("translate-error"),
  partial: $("translate-partial"),
  log: $("translate-log"),
};

// Counters a person can read in the status line and a test can read from window.voxgate.
const stats = { framesSent: 0, bytesSent: 0, results: 0, audioReceived: 0, audioPlayed: 0,
                errors: 0 };
window.voxgate = Object.assign(window.voxgate || {}, { translate: { stats } });

const player = new AudioQueue();
let session = null;

function setStatus(text) { ui.status.textContent = text; }

function showError(text) {
  stats.errors += 1;
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setRunning(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mode.disabled = running;
}

function wireConfig(mode, sampleRate) {
  const [src, tgt] = mode === "auto" ? ["auto", null] : mode.split("->");
  return { mode, src, tgt, sample_rate: sampleRate, channels: 1 };
}

function langLabel(code) {
  const span = document.createElement("span");
  span.className = "lang";
  span.textContent = code || "?";
  span.title = LANG_NAMES[code] || code || "unknown";
  return span;
}

function line(className, lang, text) {
  const p = document.createElement("p");
  p.className = className;
  p.append(langLabel(lang));
  const body = document.createElement("span");
  body.textContent = text;
  if (lang) body.lang = lang;
  p.append(body);
  return p;
}

function note(text, bad = false) {
  const p = document.createElement("p");
  p.className = bad ? "note bad" : "note";
  p.textContent = text;
  return p;
}

/** One utterance in the log: what was said, its translation, and (later) its audio. */
function addEntry(result) {
  const li = document.createElement("li");
  li.className = "utterance";
  li.dataset.src = result.src || "";
  li.dataset.tgt = result.tgt || "";
  li.append(line("source", result.src, result.transcript || ""));
  if (result.text) li.append(line("translation", result.tgt, result.text));
  if (result.error) li.append(note(`Not translated: ${result.error}`, true));
  if (result.tts_failed) li.append(note("Speech synthesis failed: text only.", true));
  ui.log.append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function attachAudio(li, bytes) {
  stats.audioReceived += 1;
  li.dataset.audio = "received";
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Play again";
  button.setAttribute("aria-label", "Play this translation again");
  button.addEventListener("click", () => player.play(bytes));
  li.append(button);
  player.play(bytes).then(() => {
    stats.audioPlayed += 1;
    li.dataset.audio = "played";
    li.dispatchEvent(new CustomEvent("voxgate:played", { bubbles: true }));
  }, (err) => {
    li.dataset.audio = "unplayable";
    li.append(note(`The translated audio could not be played: ${err.message || err}`, true));
  });
}

/** One Start..Stop: a microphone, a socket, and the log entries waiting for their audio. */
class TranslateSession {
  constructor(mode) {
    this.mode = mode;
    this.ws = null;
    this.opened = false;
    this.serverError = null;
    this.queued = [];
    this.awaitingAudio = [];
    this.lastEntry = null;
    this.stopping = false;
    this.resultsAfterStop = 0;
    this.quietTimer = null;
    this.mic = new MicCapture({ sampleRate: 48000, frameMs: 40, onFrame: (b) => this.send(b) });
  }

  async start() {
    setStatus("Asking for the microphone…");
    await this.mic.start();
    setStatus("Connecting…");
    const ws = new WebSocket(socketUrl("ws/translate"));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.opened = true;
      ws.send(JSON.stringify(wireConfig(this.mode, this.mic.sampleRate)));
      for (const frame of this.queued) this.sendNow(frame);
      this.queued = [];
      if (!this.stopping) setStatus(`Listening (${this.mic.sampleRate} Hz)… speak now.`);
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(event);
  }

  send(frame) {
    if (this.opened && this.ws.readyState === WebSocket.OPEN) this.sendNow(frame);
    else if (!this.opened && this.queued.length < MAX_QUEUED_FRAMES) this.queued.push(frame);
  }

  sendNow(frame) {
    this.ws.send(frame);
    stats.framesSent += 1;
    stats.bytesSent += frame.byteLength;
  }

  receive(data) {
    if (this.stopping) this.armQuietTimer();
    if (typeof data !== "string") {
      const li = this.awaitingAudio.shift() || this.lastEntry;
      if (li) attachAudio(li, data);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      showError("The server sent a message this page cannot read.");
      return;
    }
    if (message.type === "error") {
      this.serverError = message;
      if (message.close_code === undefined) showError(closeMessage({}, message, true));
      return;  // a closing error is shown when the socket closes
    }
    if (message.type === "partial" || message.is_final === false) {
      ui.partial.hidden = !message.transcript;
      ui.partial.textContent = message.transcript || "";
      return;
    }
    if ("tgt" in message && ("text" in message || "transcript" in message)) {
      stats.results += 1;
      ui.partial.hidden = true;
      const li = addEntry(message);
      this.lastEntry = li;
      if (!message.tts_failed && message.text) this.awaitingAudio.push(li);
      if (this.stopping) {
        this.resultsAfterStop += 1;
        this.armQuietTimer();
      }
    }
  }

  /** Stop: the last frame, then "__flush__", then wait for the answers still owed. */
  async stop() {
    this.stopping = true;
    await this.mic.stop();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send("__flush__");
      setStatus("Stopped: waiting for the last translation…");
      this.armQuietTimer();
    } else if (this.ws && this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close();
    }
  }

  armQuietTimer() {
    clearTimeout(this.quietTimer);
    const wait = this.resultsAfterStop > 0 && this.awaitingAudio.length === 0
      ? QUIET_AFTER_RESULT_MS : QUIET_WITHOUT_RESULT_MS;
    this.quietTimer = setTimeout(() => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, "done");
    }, wait);
  }

  closed(event) {
    clearTimeout(this.quietTimer);
    this.mic.stop();
    const normal = event.code === 1000 && !this.serverError;
    if (!normal && !(this.stopping && event.code === 1005)) {
      showError(closeMessage(event, this.serverError, this.opened));
    }
    if (session === this) {  // still the running one (a stopped one only finishes its answers)
      session = null;
      ui.partial.hidden = true;
      setRunning(false);
    }
    if (!session) setStatus(normal ? "Idle." : "Stopped.");
  }
}

ui.start.addEventListener("click", async () => {
  clearError();
  setRunning(true);
  await player.unlock();
  const current = new TranslateSession(ui.mode.value);
  session = current;
  try {
    await current.start();
  } catch (err) {
    showError(err instanceof MicError ? err.message : `Could not start: ${err.message || err}`);
    setStatus("Idle.");
    setRunning(false);
    if (session === current) session = null;
  }
});

ui.stop.addEventListener("click", async () => {
  const current = session;
  ui.stop.disabled = true;
  if (!current) return;
  await current.stop();
  if (session === current && current.ws && current.ws.readyState === WebSocket.OPEN) {
    session = null;  // Start may begin a new session while this one receives what it is owed
    setRunning(false);
  }
});
