// Translate tab: microphone -> /ws/translate -> a log of source + translated text, and the
// translated speech played as each utterance's WAV arrives.
//
// Wire (docs/protocol.md): first a JSON control {mode, src, tgt, sample_rate, channels}; then
// binary Int16 PCM frames; "__flush__" ends the utterance now, {"type": "end"} ends the stream.
// Per utterance the server sends a JSON result {src, tgt, text, transcript, audio, tts_failed?,
// error?}, followed by one binary WAV when `audio` is true. Typed extras: `partial` and
// `transcript` (the source text while / once spoken), `error` (with `close_code` right before
// the server closes; without it, the stream goes on), `end` (every result has been sent).

import { closeMessage } from "./console.js";
import { LivePanel, MicSocket, note } from "./panel.js";
import { AudioQueue } from "./player.js";

const LANG_NAMES = { en: "English", ru: "Russian" };
const FINISH_TIMEOUT_MS = 120000;  // after Stop: longest wait for the server's "end"

const $ = (id) => document.getElementById(id);
const ui = {
  mode: $("translate-mode"),
  start: $("translate-start"),
  stop: $("translate-stop"),
  partial: $("translate-partial"),
  log: $("translate-log"),
};

// Counters a person can read in the status line and a test can read from window.voxgate.
const stats = { framesSent: 0, bytesSent: 0, results: 0, audioReceived: 0, audioPlayed: 0,
                errors: 0 };
window.voxgate = Object.assign(window.voxgate || {}, { translate: { stats } });

const player = new AudioQueue();
const panel = new LivePanel("translate", stats, (running) => {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mode.disabled = running;
});
const setStatus = (text) => panel.setStatus(text);
const showError = (text) => panel.showError(text);

function wireControl(mode, sampleRate) {
  const [src, tgt] = mode === "auto" ? ["auto", null] : mode.split("->");
  // stream_audio: each translated sentence is played as soon as it is spoken (docs/protocol.md)
  return { mode, src, tgt, sample_rate: sampleRate, channels: 1, stream_audio: true };
}

function langLabel(code) {
  const span = document.createElement("span");
  span.className = "lang";
  span.textContent = code || "?";
  span.title = LANG_NAMES[code] || code || "unknown language";
  return span;
}

function line(className, lang, text) {
  const p = document.createElement("p");
  p.className = className;
  p.append(langLabel(lang));
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  if (lang) body.lang = lang;
  p.append(body);
  return p;
}

/** The log entry of one utterance (created by its transcript or its result, whichever is first). */
function entryFor(id) {
  const known = id !== undefined && id !== null;  // ids may start at 0
  let li = known ? ui.log.querySelector(`li[data-utterance="${CSS.escape(String(id))}"]`) : null;
  if (!li) {
    li = document.createElement("li");
    li.className = "utterance";
    if (known) li.dataset.utterance = String(id);
    ui.log.append(li);
  }
  return li;
}

function showSource(li, lang, text) {
  const old = li.querySelector(".source");
  const fresh = line("source", lang, text);
  if (old) old.replaceWith(fresh);
  else li.prepend(fresh);
  li.scrollIntoView({ block: "nearest" });
}

function showResult(li, result) {
  li.dataset.src = result.src || "";
  li.dataset.tgt = result.tgt || "";
  showSource(li, result.src, result.transcript || "");
  if (result.text) li.append(line("translation", result.tgt, result.text));
  if (result.error) li.append(note(`Not translated: ${result.error}`, true));
  if (result.tts_failed) li.append(note("Speech synthesis failed: text only.", true));
  li.scrollIntoView({ block: "nearest" });
}

// the WAVs of each log entry (several when the server streams a translation piece by piece)
const audioParts = new WeakMap();

function attachAudio(li, bytes) {
  stats.audioReceived += 1;
  li.dataset.audio = "received";
  const parts = audioParts.get(li) || [];
  parts.push(bytes);
  audioParts.set(li, parts);
  if (parts.length === 1) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Play again";
    button.setAttribute("aria-label", "Play this translation again");
    button.addEventListener("click", () => { for (const part of parts) player.play(part); });
    li.append(button);
  }
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
class TranslateSession extends MicSocket {
  constructor(mode) {
    super("ws/translate", stats, panel);
    this.mode = mode;
    this.awaitingAudio = [];
    this.finishTimer = null;
  }

  async start() {
    setStatus("Asking for the microphone…");
    await this.mic.start();
    setStatus("Connecting…");
    this.connect();
  }

  config() { return wireControl(this.mode, this.mic.sampleRate); }

  opened_() {
    if (!this.stopping) setStatus(`Listening (${this.mic.sampleRate} Hz)… speak now.`);
  }

  audio(bytes) {
    const li = this.awaitingAudio.shift();
    if (li) attachAudio(li, bytes);
  }

  message(message) {
    switch (message.type) {
      case "partial":
        ui.partial.textContent = message.text || "";
        ui.partial.hidden = !message.text;
        return;
      case "transcript":
        ui.partial.hidden = true;
        showSource(entryFor(message.utterance_id), message.src, message.text || "");
        return;
      case "error":
        this.error(message);
        return;
      case "end":
        setStatus("Stopped: every translation has arrived.");
        return;
      case "ready":
        return;
      case "audio":  // a streamed piece: its WAV comes next
        this.awaitingAudio.push(entryFor(message.utterance_id));
        return;
      default:
        if ("tgt" in message && ("text" in message || "transcript" in message)) {
          this.result(message);
        }
    }
  }

  result(message) {
    stats.results += 1;
    ui.partial.hidden = true;
    const li = entryFor(message.utterance_id);
    showResult(li, message);
    const audioFollows = message.audio !== undefined
      ? Boolean(message.audio) : Boolean(message.text) && !message.tts_failed;
    if (audioFollows) this.awaitingAudio.push(li);
  }

  error(message) {
    if (message.close_code !== undefined) {
      this.serverError = message;  // shown when the socket closes, right after this
      return;
    }
    if (message.code === "unsupported_language") {
      const li = entryFor(message.utterance_id);
      showSource(li, message.language, message.transcript || "");
      const name = LANG_NAMES[message.language] || message.language || "another language";
      li.append(note(`Heard ${name}: only English and Russian are translated.`, true));
      return;
    }
    showError(closeMessage({}, message, true));
  }

  /** Stop: the last frame, "__flush__", then "end"; the server closes once all is sent. */
  async stop() {
    this.stopping = true;
    await this.mic.stop();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send("__flush__");
      this.ws.send(JSON.stringify({ type: "end" }));
      setStatus("Stopped: waiting for the last translation…");
      this.finishTimer = setTimeout(() => this.ws.close(1000, "done"), FINISH_TIMEOUT_MS);
    } else if (this.ws && this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close();
    }
  }

  closed(event) {
    clearTimeout(this.finishTimer);
    this.mic.stop();
    const normal = event.code === 1000 && !this.serverError;
    if (!normal && !(this.stopping && event.code === 1005)) {
      showError(closeMessage(event, this.serverError, this.opened));
    }
    // still the running one? (a stopped one only finishes its answers)
    if (panel.finished(this)) ui.partial.hidden = true;
    if (!panel.session && !normal) setStatus("Stopped.");
    else if (!panel.session && !this.stopping) setStatus("Idle.");
  }
}

panel.onStart(ui.start, () => {
  // made in the click (autoplay rules); not awaited: a slow or absent audio output must not
  // hold up the microphone and the socket (play() waits for it instead)
  player.unlock().catch(() => {});
  return new TranslateSession(ui.mode.value);
});

ui.stop.addEventListener("click", async () => {
  const current = panel.session;
  ui.stop.disabled = true;
  if (!current) return;
  await current.stop();
  if (current.ws && current.ws.readyState === WebSocket.OPEN) {
    // Start may begin a new session while this one receives what it is owed
    panel.finished(current);
  }
});

ui.start.disabled = false;  // the handlers are in place: Start may be pressed
