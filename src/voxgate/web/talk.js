// Talk tab: microphone -> /v1/agent -> the conversation as text, and the agent's voice played as
// its PCM chunks arrive, with barge-in.
//
// Wire (docs/protocol.md, "WebSocket /v1/agent"): first a JSON config {type: "config",
// sample_rate, encoding: "pcm16", channels}; then binary Int16 PCM frames, continuously;
// {"type": "interrupt"} stops the agent's reply. The server answers `ready` (with the output
// rate), then JSON events (`transcript`, `user_speech`, `turn`, `agent_text`, `audio_paused`,
// `audio_resumed`, `interruption`, `latency`, `error`) and the agent's audio as binary PCM16
// frames at `ready.output.sample_rate`. `audio_paused`: the user speaks over the agent: stop
// playback at once and drop what is queued; `audio_resumed`: it was no real turn, the audio
// continues (the server sends the rest again). Stop hangs up (the server cancels the reply).

import { closeMessage } from "./console.js";
import { LivePanel, MicSocket, note } from "./panel.js";
import { PcmStream } from "./player.js";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("talk-start"),
  interrupt: $("talk-interrupt"),
  stop: $("talk-stop"),
  partial: $("talk-partial"),
  log: $("talk-log"),
};

// Counters a person can read in the status line and a test can read from window.voxgate.
const stats = { framesSent: 0, bytesSent: 0, replies: 0, audioChunks: 0, audioDropped: 0,
                pauses: 0, resumes: 0, interruptions: 0, errors: 0 };
let current = null;  // the log entry of the agent turn whose audio arrives now
const endedTurns = new Set();  // ended agent turns whose audio may still be playing
const player = new PcmStream({ onIdle: () => finishPlayback() });
window.voxgate = Object.assign(window.voxgate || {}, {
  talk: { stats, player: player.stats, playing: () => player.playing } });

const panel = new LivePanel("talk", stats, (running) => {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.interrupt.disabled = !running;
});
const setStatus = (text) => panel.setStatus(text);
const showError = (text) => panel.showError(text);

/** The log entry of one side of one turn (`user` or `agent`), created on first use. */
function entryFor(role, turnId) {
  const key = `${role}-${turnId}`;
  let li = ui.log.querySelector(`li[data-key="${CSS.escape(key)}"]`);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    li.dataset.key = key;
    li.dataset.turn = String(turnId);
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Agent";
    const text = document.createElement("span");
    text.className = "text";
    li.append(who, text);
    ui.log.append(li);
  }
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function setText(li, text) { li.querySelector(".text").textContent = text; }

/** Agent turns that have ended and whose last chunk was heard: marked `played`. */
function finishPlayback() {
  if (player.playing) return;
  for (const li of endedTurns) {
    if (li.dataset.audio === "playing") {
      li.dataset.audio = "played";
      li.dispatchEvent(new CustomEvent("voxgate:played", { bubbles: true }));
    }
  }
  endedTurns.clear();
}

/** One Start..Stop: a microphone, a socket, one agent session on the server. */
class TalkSession extends MicSocket {
  constructor() {
    super("v1/agent", stats, panel);
    this.ready = false;
    this.paused = false;  // between audio_paused and audio_resumed: drop agent audio
    this.outRate = 0;
  }

  async start() {
    setStatus("Asking for the microphone…");
    await this.mic.start();
    if (this.stopping) {  // Stop was pressed while the microphone was being opened
      await this.mic.stop();
      return;
    }
    setStatus("Connecting…");
    this.connect();
  }

  config() {
    return { type: "config", sample_rate: this.mic.sampleRate, encoding: "pcm16", channels: 1 };
  }

  opened_() {
    if (!this.stopping) setStatus("Starting the agent…");
  }

  message(message) {
    const handler = this.handlers[message.type];
    if (handler) handler.call(this, message);
  }

  audio(bytes) {
    if (this.paused || this.stopping || !this.outRate) {
      stats.audioDropped += 1;
      return;
    }
    stats.audioChunks += 1;
    player.push(bytes, this.outRate);
    if (current) current.dataset.audio = "playing";
  }

  /** Stop the agent's voice now (barge-in, Interrupt, Stop): nothing queued is played. */
  silence() {
    player.stop();
    for (const li of [current, ...endedTurns]) {
      if (li && li.dataset.audio === "playing") li.dataset.audio = "stopped";
    }
    endedTurns.clear();
  }

  /** Stop: the microphone, the agent's voice and the socket (the server cancels the reply). */
  async stop() {
    this.stopping = true;
    this.silence();
    await this.mic.stop();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "stop");
  }

  interrupt() {
    this.silence();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "interrupt" }));
    }
  }

  closed(event) {
    this.mic.stop();
    this.silence();
    const normal = (event.code === 1000 || (this.stopping && event.code === 1005))
      && !this.serverError;
    if (!normal) showError(closeMessage(event, this.serverError, this.opened));
    if (panel.finished(this)) ui.partial.hidden = true;
    if (!panel.session) setStatus("Stopped.");
  }
}

TalkSession.prototype.handlers = {
  ready(message) {
    this.ready = true;
    this.outRate = message.output.sample_rate;
    if (message.output.encoding !== "pcm16") {
      showError(`The server sends ${message.output.encoding} audio; this page plays pcm16.`);
    }
    if (!this.stopping) setStatus(`Listening (${this.mic.sampleRate} Hz)… ask something.`);
  },
  user_speech(message) {
    if (message.state === "started") setStatus("Hearing you…");
  },
  transcript(message) {
    if (message.final) {
      ui.partial.hidden = true;
      setText(entryFor("user", message.turn_id), message.turn_text || message.text || "");
    } else {
      ui.partial.textContent = message.turn_text || message.text || "";
      ui.partial.hidden = !ui.partial.textContent;
    }
  },
  turn(message) {
    if (message.role === "user") {
      if (message.event !== "ended") return;
      ui.partial.hidden = true;
      if (message.reason === "dropped") {
        const li = ui.log.querySelector(`li[data-key="user-${message.turn_id}"]`);
        if (li) li.remove();
        return;
      }
      const li = entryFor("user", message.turn_id);
      if (message.text) setText(li, message.text);
      setStatus("The agent is answering…");
      return;
    }
    const li = entryFor("agent", message.turn_id);
    if (message.event === "started") {
      this.paused = false;  // the old reply's tail (if any) still plays, this one queues after
      current = li;
      stats.replies += 1;
      return;
    }
    li.dataset.reason = message.reason || "";
    li.dataset.ended = "true";
    if (typeof message.audio_s === "number") li.dataset.audioS = String(message.audio_s);
    if (message.text && message.reason === "completed") setText(li, message.text);
    if (!this.stopping) setStatus("Listening… ask something.");
    endedTurns.add(li);
    if (current === li) current = null;
    finishPlayback();
  },
  agent_text(message) {
    const li = entryFor("agent", message.turn_id);
    const text = li.querySelector(".text");
    text.textContent += message.delta;
  },
  audio_paused(message) {
    stats.pauses += 1;
    this.paused = true;
    this.silence();
    entryFor("agent", message.turn_id).dataset.state = "paused";
    setStatus("Paused: you are speaking over the agent…");
  },
  audio_resumed(message) {
    stats.resumes += 1;
    this.paused = false;
    entryFor("agent", message.turn_id).dataset.state = "resumed";
    setStatus("The agent goes on…");
  },
  interruption(message) {
    stats.interruptions += 1;
    this.paused = false;
    this.silence();
    const li = entryFor("agent", message.turn_id);
    li.dataset.state = "interrupted";
    li.append(note(message.played_text
      ? `Interrupted; heard up to: “${message.played_text}”` : "Interrupted before it spoke."));
  },
  latency(message) {
    if (typeof message.voice_to_voice_s !== "number") return;
    const li = entryFor("agent", message.turn_id);
    li.append(note(`Answered ${message.voice_to_voice_s.toFixed(2)} s after you stopped.`));
  },
  error(message) {
    if (message.close_code !== undefined || message.fatal) {
      this.serverError = message;  // shown when the socket closes, right after this
      return;
    }
    const li = message.turn_id ? entryFor("agent", message.turn_id) : null;
    const text = message.code === "tts_error" ? "Speech synthesis failed: text only."
      : `The agent had a problem (${message.code}): ${message.message}`;
    if (li) li.append(note(text, true));
    else showError(text);
  },
  end() {
    setStatus("Stopped.");
  },
};

panel.onStart(ui.start, () => {
  player.unlock();  // in the click: autoplay rules allow a context made by a user gesture
  return new TalkSession();
});

ui.interrupt.addEventListener("click", () => { if (panel.session) panel.session.interrupt(); });

ui.stop.addEventListener("click", async () => {
  const mine = panel.session;
  panel.setRunning(false);
  if (!mine) return;
  panel.session = null;
  await mine.stop();
  setStatus("Stopped.");
});

ui.start.disabled = false;  // the handlers are in place: Start may be pressed
