// rtserve demo page: live captions and a voice assistant over /v1/realtime, file transcription.
// Captions follow the server's transcript contract: the stable part of a caption only ever grows
// (we append to it, never rewrite it); the unstable tail is replaced on every update.

const $ = (id) => document.getElementById(id);
const RATE = 24000; // what the AudioContext runs at and the session is told
const MAX_BACKOFF_MS = 10000;

const ui = {
  state: $("state"), message: $("message"), captions: $("captions"), replies: $("replies"),
  mode: $("mode"), asrModel: $("asr-model"), chatModel: $("chat-model"), language: $("language"),
  apiKey: $("api-key"), start: $("start"), stop: $("stop"), latency: $("latency"), lag: $("lag"),
  buffered: $("buffered"), assistantPanel: $("assistant-panel"), fileForm: $("file-form"),
  file: $("file"), segments: $("segments"),
};

let ws = null;
let audio = null; // {context, stream, node}
let wanted = false; // the user wants to be connected (reconnect on drops)
let backoff = 500;
const captions = new Map(); // item id -> {el, stable, unstable, text}
const replies = new Map(); // response id -> element
let stoppedAt = new Map(); // item id -> time speech stopped (for the latency readout)

ui.apiKey.value = localStorage.getItem("rtserve-api-key") || "";
ui.apiKey.addEventListener("change", () => {
  localStorage.setItem("rtserve-api-key", ui.apiKey.value);
  loadModels();
});
ui.mode.addEventListener("change", () => (ui.assistantPanel.hidden = ui.mode.value !== "assistant"));
ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop());
ui.fileForm.addEventListener("submit", transcribeFile);

function setState(kind, text) {
  ui.state.className = `state ${kind}`;
  ui.state.textContent = text;
}

function say(text) {
  ui.message.hidden = !text;
  ui.message.textContent = text || "";
}

function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModels() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    if (r.status === 401) return say("This server needs an API key: enter it above.");
    const { data } = await r.json();
    fill(ui.asrModel, data.filter((m) => m.kind === "asr"));
    fill(ui.chatModel, data.filter((m) => m.kind === "chat"));
    say("");
  } catch (e) {
    say(`Cannot reach the server: ${e}`);
  }
}

function fill(select, models) {
  select.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
}

// ---- connection ----

function socketUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const query = ui.mode.value === "assistant"
    ? `model=${encodeURIComponent(ui.chatModel.value)}`
    : "intent=transcription";
  return `${proto}://${location.host}/v1/realtime?${query}`;
}

function sessionUpdate() {
  const input = {
    format: { type: "audio/pcm", rate: RATE },
    transcription: { model: ui.asrModel.value || undefined, language: ui.language.value || null },
    turn_detection: { type: "server_vad" },
  };
  if (ui.mode.value === "assistant") {
    return { type: "realtime", model: ui.chatModel.value, audio: { input },
             instructions: "You are a helpful voice assistant. Answer briefly." };
  }
  return { type: "transcription", audio: { input } };
}

async function start() {
  wanted = true;
  ui.start.disabled = true;
  ui.stop.disabled = false;
  say("");
  try {
    await startMicrophone();
  } catch (e) {
    stop();
    return say(`No microphone: ${e.message || e}`);
  }
  connect();
}

function stop(state = ["idle", "not connected"]) {
  wanted = false;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  if (ws) ws.close(1000);
  if (audio) {
    audio.stream.getTracks().forEach((t) => t.stop());
    audio.context.close();
    audio = null;
  }
  if (state) setState(...state);
}

function connect() {
  setState("connecting", "connecting…");
  const protocols = ["realtime"];
  const key = ui.apiKey.value.trim();
  if (key) protocols.push(`openai-insecure-api-key.${key}`);
  ws = new WebSocket(socketUrl(), protocols);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "session.update", session: sessionUpdate() }));
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onclose = (e) => onClose(e);
}

function onClose(e) {
  ws = null;
  if (!wanted) return;
  let wait = backoff;
  if (e.code === 1013) wait = (retryAfter || 5) * 1000; // server full: it said when to retry
  if (e.code === 1008) {
    stop(null); // bad key or not reading: the error event already said why; keep its state
    return;
  }
  backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  setState("connecting", `reconnecting in ${Math.round(wait / 1000)} s`);
  setTimeout(() => wanted && connect(), wait);
}

async function startMicrophone() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  const context = new AudioContext({ sampleRate: RATE });
  await context.audioWorklet.addModule("mic-worklet.js");
  const node = new AudioWorkletNode(context, "mic-capture");
  node.port.onmessage = (m) => {
    if (ws && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < RATE * 4) ws.send(m.data);
  };
  context.createMediaStreamSource(stream).connect(node);
  audio = { context, stream, node };
}

// ---- server events ----

let retryAfter = 0;

function onEvent(ev) {
  switch (ev.type) {
    case "session.created":
    case "session.updated":
      setState("live", "live");
      backoff = 500;
      break;
    case "input_audio_buffer.speech_started":
      caption(ev.item_id);
      break;
    case "input_audio_buffer.speech_stopped":
      stoppedAt.set(ev.item_id, performance.now());
      break;
    case "rtserve.transcription.partial":
      update(ev.item_id, ev.stable, ev.unstable);
      break;
    case "conversation.item.input_audio_transcription.completed": {
      update(ev.item_id, ev.transcript, "");
      caption(ev.item_id).el.classList.add("done");
      const t0 = stoppedAt.get(ev.item_id);
      if (t0) ui.latency.textContent = `${Math.round(performance.now() - t0)} ms`;
      stoppedAt.delete(ev.item_id);
      break;
    }
    case "rtserve.lag":
      ui.lag.textContent = `${ev.lag_ms} ms`;
      ui.buffered.textContent = `${ev.buffered_ms} ms`;
      break;
    case "response.created":
      reply(ev.response.id);
      break;
    case "response.output_text.delta":
      reply(ev.response_id).textContent += ev.delta;
      break;
    case "response.done":
      if (ev.response.status === "cancelled") reply(ev.response.id).classList.add("cancelled");
      break;
    case "error":
      onError(ev.error);
      break;
  }
}

function onError(error) {
  const messages = {
    invalid_api_key: "The server refused the API key: enter the right one above.",
    server_busy: "The server is full right now; retrying shortly.",
    session_expired: "The session reached its time limit; reconnecting.",
    audio_dropped: "The server is overloaded: some audio was dropped.",
  };
  if (error.code === "server_busy") retryAfter = error.retry_after || 5;
  if (error.code === "invalid_api_key") setState("error", "refused");
  say(messages[error.code] || `Server error: ${error.message}`);
}

function caption(itemId) {
  let c = captions.get(itemId);
  if (!c) {
    const el = document.createElement("p");
    el.className = "caption";
    el.dataset.item = itemId;
    const stable = el.appendChild(document.createElement("span"));
    stable.className = "stable";
    const unstable = el.appendChild(document.createElement("span"));
    unstable.className = "unstable";
    ui.captions.appendChild(el);
    c = { el, stable, unstable, text: "" };
    captions.set(itemId, c);
  }
  return c;
}

function update(itemId, stable, unstable) {
  const c = caption(itemId);
  if (stable.startsWith(c.text) && stable.length > c.text.length) {
    c.stable.append(stable.slice(c.text.length)); // committed text only grows
    c.text = stable;
  }
  c.unstable.textContent = unstable;
  c.el.scrollIntoView({ block: "nearest" });
}

function reply(responseId) {
  let el = replies.get(responseId);
  if (!el) {
    el = document.createElement("p");
    el.className = "reply";
    ui.replies.appendChild(el);
    replies.set(responseId, el);
  }
  return el;
}

// ---- files ----

async function transcribeFile(e) {
  e.preventDefault();
  const file = ui.file.files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("response_format", "verbose_json");
  if (ui.asrModel.value) form.append("model", ui.asrModel.value);
  if (ui.language.value) form.append("language", ui.language.value);
  ui.segments.replaceChildren(new Option("transcribing…"));
  const r = await fetch("/v1/audio/transcriptions", { method: "POST", body: form, headers: authHeaders() });
  const body = await r.json();
  if (!r.ok) {
    ui.segments.replaceChildren();
    return say(`Transcription failed: ${body.error ? body.error.message : r.status}`);
  }
  ui.segments.replaceChildren(...body.segments.map((s) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="time"></span>`;
    li.firstChild.textContent = `${s.start.toFixed(1)}–${s.end.toFixed(1)} s`;
    li.append(s.text);
    return li;
  }));
}

loadModels();
