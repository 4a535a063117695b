// voxgate web console: tabs, the API key, and the WebSocket plumbing every tool shares.
// Each tool is a module that builds its panel's behaviour, loaded by its own script tag in
// index.html (after this one; a static import here would be circular).

const KEY_STORAGE = "voxgate.apiKey";

/** The API key typed in the header (kept in sessionStorage: this tab only). */
export function apiKey() {
  return document.getElementById("api-key").value.trim();
}

/** ws(s)://<this host><path>?api_key=... (browsers cannot set headers on a WebSocket). */
export function socketUrl(path) {
  const url = new URL(path, window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  const key = apiKey();
  if (key) url.searchParams.set("api_key", key);
  return url.toString();
}

const CLOSE_TEXT = {
  1003: "The server could not use what was sent.",
  1008: "The server refused the stream.",
  1009: "A message was too large for the server.",
  1011: "The server hit an internal error.",
  1013: "The server is busy: every live stream slot is in use. Try again in a moment.",
};

/**
 * One sentence for the user about why a socket ended: the server's own error message when it
 * sent one (always the case for auth, busy, bad input), else the close code, else the network.
 */
export function closeMessage(event, serverError, opened) {
  if (serverError) {
    if (serverError.code === "unauthorized") {
      return "The server refused the API key. Enter a valid key above and press Start again.";
    }
    if (serverError.code === "busy") {
      return `The server is busy: ${serverError.message} Try again in a moment.`;
    }
    return `Server error (${serverError.code || "error"}): ${serverError.message}`;
  }
  if (CLOSE_TEXT[event.code]) {
    return CLOSE_TEXT[event.code] + (event.reason ? ` (${event.reason})` : "");
  }
  if (!opened) {
    return `Could not connect to ${window.location.host}: is the voxgate server running?`;
  }
  return `The connection to the server was lost (code ${event.code}).`;
}

function setupApiKey() {
  const input = document.getElementById("api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, input.value.trim()));
  document.getElementById("key-form").addEventListener("submit", (e) => e.preventDefault());
}

/** WAI-ARIA tabs: click or arrow keys select; only the selected tab is in the tab order. */
function setupTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const select = (tab) => {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !selected;
    }
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      select(next);
      next.focus();
    });
  });
  select(tabs.find((t) => t.getAttribute("aria-selected") === "true") || tabs[0]);
}

setupApiKey();
setupTabs();
