// What the live tools (Translate, Talk) do alike: a panel's status line and error box, short
// notes in its log, and a microphone streamed to a WebSocket whose first message is a JSON
// config (frames captured while the socket opens are queued, then sent in order).

import { socketUrl } from "./console.js";
import { MicCapture, MicError } from "./mic.js";

const MAX_QUEUED_FRAMES = 250;  // ~10 s of audio held while the socket opens

/** The status line and error box of the panel whose element ids start with `prefix`. */
export class PanelMessages {
  constructor(prefix, stats) {
    this.status = document.getElementById(`${prefix}-status`);
    this.error = document.getElementById(`${prefix}-error`);
    this.stats = stats;  // stats.errors counts what was shown
  }

  setStatus(text) { this.status.textContent = text; }

  showError(text) {
    this.stats.errors += 1;
    this.error.textContent = text;
    this.error.hidden = false;
  }

  clearError() {
    this.error.textContent = "";
    this.error.hidden = true;
  }
}

/**
 * One live tool's panel: its messages (status line, error box) and the session running in it
 * (`session`, null when idle). `setRunning(running)` enables the tool's buttons.
 */
export class LivePanel extends PanelMessages {
  constructor(prefix, stats, setRunning) {
    super(prefix, stats);
    this.session = null;
    this.setRunning = setRunning;
  }

  /**
   * Pressing `button` starts a session made by `create()` (called in the click, so audio made
   * there may play); a session that cannot start leaves the panel idle and says why.
   */
  onStart(button, create) {
    button.addEventListener("click", async () => {
      this.clearError();
      this.setRunning(true);
      const mine = create();
      this.session = mine;
      if (!await startSession(mine, this) && this.session === mine) {
        this.session = null;
        this.setRunning(false);
      }
    });
  }

  /** `session` has ended: true when it was the running one (the panel is idle again). */
  finished(session) {
    if (this.session !== session) return false;
    this.session = null;
    this.setRunning(false);
    return true;
  }
}

/**
 * Start `session` (microphone, then socket); true when it runs. A microphone or socket that
 * cannot start is said in the panel, in words (a denied microphone names the site setting).
 */
export async function startSession(session, messages) {
  try {
    await session.start();
    return true;
  } catch (err) {
    messages.showError(err instanceof MicError ? err.message
      : `Could not start: ${err.message || err}`);
    messages.setStatus("Idle.");
    return false;
  }
}

/** A short line under a log entry (`bad`: a failure, shown in the error colour). */
export function note(text, bad = false) {
  const p = document.createElement("p");
  p.className = bad ? "note bad" : "note";
  p.textContent = text;
  return p;
}

/**
 * One Start..Stop of a live tool: the microphone (48 kHz Int16 frames) and the socket at
 * `path`. A subclass gives `config()` (the first message), `message(json)` (a JSON message
 * from the server), `audio(bytes)` (a binary one), `closed(event)` and may give `opened_()`
 * (the socket is open and the config sent). A text message that is no JSON is said in
 * `messages` (a PanelMessages) and dropped: the stream goes on.
 */
export class MicSocket {
  constructor(path, stats, messages) {
    this.path = path;
    this.stats = stats;  // framesSent, bytesSent
    this.messages = messages;
    this.ws = null;
    this.opened = false;
    this.serverError = null;
    this.queued = [];
    this.stopping = false;
    this.mic = new MicCapture({ sampleRate: 48000, frameMs: 40, onFrame: (b) => this.send(b) });
  }

  /** Open the socket (the microphone is running): config first, then the queued frames. */
  connect() {
    const ws = new WebSocket(socketUrl(this.path));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.opened = true;
      ws.send(JSON.stringify(this.config()));
      for (const frame of this.queued) this.sendNow(frame);
      this.queued = [];
      this.opened_();
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(event);
  }

  opened_() {}

  receive(data) {
    if (typeof data !== "string") {
      this.audio(data);
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.messages.showError("The server sent a message this page cannot read.");
      return;
    }
    this.message(message);
  }

  send(frame) {
    if (this.opened && this.ws.readyState === WebSocket.OPEN) this.sendNow(frame);
    else if (!this.opened && this.queued.length < MAX_QUEUED_FRAMES) this.queued.push(frame);
  }

  sendNow(frame) {
    this.ws.send(frame);
    this.stats.framesSent += 1;
    this.stats.bytesSent += frame.byteLength;
  }
}
