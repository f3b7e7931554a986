// The page: wires KameClient to the controls and the live panels. window.kame exposes the state
// (transcripts, oracles, words, metrics, audio counters) for people poking in the console and for the
// browser test.

import { KameClient, missingFeatures } from "./client.js";

// The access token: taken from the page's URL (/?token=...) once, then kept in this tab's session
// storage, out of the address bar, the history and any referrer (the page is served no-referrer).
const TOKEN_KEY = "kame.token";
function takeToken() {
  const url = new URL(location.href);
  if (url.searchParams.has("token")) {
    const given = url.searchParams.get("token");
    url.searchParams.delete("token");
    history.replaceState(history.state, "", `${url.pathname}${url.search}${url.hash}`);
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}
let token = takeToken();

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  banner: $("banner"),
  bannerTitle: $("banner-title"),
  bannerText: $("banner-text"),
  bannerList: $("banner-list"),
  bannerClose: $("banner-close"),
  connect: $("connect"),
  hangup: $("hangup"),
  talk: $("talk"),
  talkLabel: $("talk-label"),
  talkWrap: $("talk-wrap"),
  latch: $("latch"),
  meterIn: $("meter-in"),
  meterOut: $("meter-out"),
  transcript: $("transcript"),
  partial: $("partial"),
  userEmpty: $("user-empty"),
  userScroll: $("user-scroll"),
  assistant: $("assistant"),
  assistantEmpty: $("assistant-empty"),
  assistantScroll: $("assistant-scroll"),
  oracleCurrent: $("oracle-current"),
  oracleBadge: $("oracle-badge"),
  oracleTime: $("oracle-time"),
  oracleText: $("oracle-text"),
  oracleHistory: $("oracle-history"),
  tokenForm: $("token-form"),
  tokenInput: $("token-input"),
  oracleName: $("oracle-name"),
  oracleSub: $("oracle-sub"),
  assistantName: $("assistant-name"),
  pipeline: $("pipeline"),
  pipelineChoice: $("pipeline-choice"),
  pipelineHint: $("pipeline-hint"),
  pipelineBadge: $("pipeline-badge"),
};

// What each pipeline is, and how the panels read for it (the server says which it offers in /healthz).
const PIPELINES = {
  kame: {
    label: "KAME (tandem)",
    hint: "Speaks at once; the back-end LLM's knowledge streams into its voice as oracles.",
    assistant: "kame",
    panel: "Oracle",
    panelSub: "the back-end LLM's running answer, fed to the voice as hints",
    waiting: "Nothing yet: the back-end starts answering as soon as it hears you.",
  },
  cascade: {
    label: "Cascade (STT → LLM → TTS)",
    hint: "Waits for you to finish, then answers; talk over it to interrupt.",
    assistant: "cascade",
    panel: "Reply",
    panelSub: "the LLM's answer as it streams, spoken chunk by chunk once your turn ends",
    waiting: "Nothing yet: the LLM answers once you stop talking.",
  },
};

const NEW_TURN_GAP_S = 1.2; // a pause this long in the assistant's words starts a new paragraph
const SPARK_POINTS = 40;

const state = {
  client: null,
  connection: "idle",
  session: null,
  finals: [],
  partial: "",
  oracle: null, // {stream, t, text, status}
  oracles: [], // every oracle shown, oldest first: {stream, t, text, status}
  droppedAnswers: 0,
  words: [], // {t, text}
  monologue: "",
  metrics: null,
  events: {},
  pressed: new Set(), // what holds the talk button down: "pointer", "key"
  spark: { ttft: [], lag: [] },
  pipeline: null, // what the session talks to (its "session" event says)
  replyLatencies: [], // seconds, one per cascade reply
  offered: [], // what the server offers
};

window.kame = {
  get state() {
    return state;
  },
  get stats() {
    return state.client ? { ...state.client.stats } : null;
  },
  snapshot() {
    return {
      connection: state.connection,
      session: state.session,
      pipeline: state.pipeline,
      replyLatencies: [...state.replyLatencies],
      offered: [...state.offered],
      talking: state.client?.talking ?? false,
      finals: state.finals.map((f) => f.text),
      partial: state.partial,
      oracles: state.oracles.map((o) => ({ stream: o.stream, t: o.t, text: o.text, status: o.status })),
      words: state.words.map((w) => w.text),
      monologue: state.monologue,
      metrics: state.metrics,
      events: { ...state.events },
      stats: state.client ? { ...state.client.stats } : null,
      banner: ui.banner.hidden ? null : `${ui.bannerTitle.textContent} ${ui.bannerText.textContent}`.trim(),
      tokenAsked: !ui.tokenForm.hidden,
      hasToken: Boolean(token),
    };
  },
};

// ---- helpers --------------------------------------------------------------------------------------
function formatTime(t) {
  if (typeof t !== "number" || !Number.isFinite(t)) return "";
  const m = Math.floor(t / 60);
  const s = t - m * 60;
  return `${m}:${s.toFixed(1).padStart(4, "0")}`;
}

function nearBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 60;
}

function keepScrolled(el, wasNearBottom) {
  if (wasNearBottom) el.scrollTop = el.scrollHeight;
}

function showBanner(title, text, { tone = "error", list = [] } = {}) {
  ui.banner.dataset.tone = tone;
  ui.bannerTitle.textContent = title;
  ui.bannerText.textContent = text;
  ui.bannerList.replaceChildren(...list.map((item) => Object.assign(document.createElement("li"), { textContent: item })));
  ui.bannerList.hidden = list.length === 0;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
}

// ---- connection -----------------------------------------------------------------------------------
const STATUS_TEXT = {
  idle: "Not connected",
  connecting: "Connecting…",
  queued: "Waiting in line",
  live: "Live",
  closed: "Disconnected",
  full: "Server full",
  unauthorized: "Access token needed",
  error: "Error",
};

function setConnection(connection, detail = "") {
  state.connection = connection;
  ui.status.dataset.state = connection;
  const live = connection === "live";
  let text = STATUS_TEXT[connection] ?? connection;
  if (live && state.session) text = `Live · session ${state.session}${state.pipeline ? ` · ${state.pipeline}` : ""}`;
  else if (detail && (connection === "connecting" || connection === "queued")) text = detail;
  ui.statusText.textContent = text;

  const busy = connection === "connecting" || connection === "queued";
  ui.connect.hidden = live || busy;
  ui.hangup.hidden = !(live || busy);
  ui.talk.disabled = !live;
  ui.pipeline.disabled = live || busy;
  ui.latch.disabled = !live;
  if (!live) releaseAll();
  if (live) {
    hideBanner();
    ui.talk.focus();
  }
  ui.tokenForm.hidden = connection !== "unauthorized";
  if (connection === "unauthorized") {
    showBanner("An access token is needed", `${detail} Ask whoever runs the server, or open the link it printed.`);
    ui.connect.hidden = true;
    ui.tokenInput.focus();
  } else if (connection === "full") {
    showBanner("The server is full", detail || "Every session is in use. Try again in a minute.");
    ui.connect.textContent = "Try again";
  } else if (connection === "error") {
    showBanner("Something went wrong", detail);
    ui.connect.textContent = "Reconnect";
  } else if (connection === "closed") {
    if (detail && !detail.startsWith("You ended")) showBanner("The conversation ended", detail, { tone: "warning" });
    ui.connect.textContent = "Start a new conversation";
  }
  ui.connect.disabled = false;
}

async function connect() {
  hideBanner();
  ui.connect.disabled = true;
  resetPanels();
  const client = new KameClient({ token, pipeline: ui.pipeline.value || undefined });
  state.client = client;
  client.on("state", ({ state: s, detail }) => {
    if (client === state.client) setConnection(s, detail);
  });
  client.on("event", onEvent);
  client.on("text", ({ piece }) => {
    state.monologue += piece;
  });
  client.on("level", onLevel);
  client.on("playback", onPlayback);
  client.on("warning", (message) => showBanner("Heads up", message, { tone: "warning" }));
  client.on("server-error", (message) => showBanner("The server ended the session", message));
  try {
    await client.start();
  } catch (err) {
    client.stop(err.message);
    setConnection("error", `Could not start audio: ${err.message}`);
  }
}

function hangUp() {
  state.client?.stop();
}

// ---- press to talk --------------------------------------------------------------------------------
function updateTalking() {
  const latched = ui.latch.checked;
  const on = state.connection === "live" && (latched || state.pressed.size > 0);
  state.client?.setTalking(on);
  ui.talk.setAttribute("aria-pressed", String(on));
  ui.talkWrap.dataset.talking = String(on);
  ui.talkLabel.textContent = on ? (latched && state.pressed.size === 0 ? "Mic open" : "Listening…") : "Hold to talk";
}

function press(source) {
  if (ui.talk.disabled) return;
  state.pressed.add(source);
  updateTalking();
}

function release(source) {
  state.pressed.delete(source);
  updateTalking();
}

function releaseAll() {
  state.pressed.clear();
  updateTalking();
}

function spaceIsOurs(event) {
  const t = event.target;
  if (t === ui.talk || t === document.body || t === document.documentElement) return true;
  // Space keeps its usual job in form controls and on other buttons.
  return !(t instanceof HTMLElement) || !t.closest("input, textarea, select, button, a, [contenteditable]");
}

ui.talk.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || ui.talk.disabled) return;
  event.preventDefault();
  ui.talk.setPointerCapture(event.pointerId);
  press("pointer");
});
for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) ui.talk.addEventListener(type, () => release("pointer"));
ui.talk.addEventListener("contextmenu", (event) => event.preventDefault()); // long press on touch screens
ui.talk.addEventListener("keydown", (event) => {
  // Enter toggles the open microphone for people who cannot hold a key.
  if (event.key === "Enter") {
    event.preventDefault();
    ui.latch.checked = !ui.latch.checked;
    updateTalking();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.code !== "Space" || !spaceIsOurs(event) || state.connection !== "live") return;
  event.preventDefault();
  if (!event.repeat) press("key");
});
document.addEventListener("keyup", (event) => {
  if (event.code !== "Space" || !state.pressed.has("key")) return;
  event.preventDefault();
  release("key");
});
window.addEventListener("blur", releaseAll);
ui.latch.addEventListener("change", updateTalking);
ui.connect.addEventListener("click", connect);
ui.hangup.addEventListener("click", hangUp);
ui.bannerClose.addEventListener("click", hideBanner);
ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const given = ui.tokenInput.value.trim();
  ui.tokenInput.value = "";
  if (!given) return;
  token = given;
  sessionStorage.setItem(TOKEN_KEY, given);
  ui.tokenForm.hidden = true;
  connect();
});

// ---- panels ---------------------------------------------------------------------------------------
function resetPanels() {
  Object.assign(state, { session: null, pipeline: null, replyLatencies: [], finals: [], partial: "", oracle: null, oracles: [], droppedAnswers: 0, words: [], monologue: "", metrics: null, events: {} });
  state.spark = { ttft: [], lag: [] };
  ui.transcript.replaceChildren();
  ui.assistant.replaceChildren();
  ui.oracleHistory.replaceChildren();
  renderPartial();
  renderOracle();
  ui.userEmpty.hidden = false;
  ui.assistantEmpty.hidden = false;
  for (const id of ["m-ttft", "m-lag", "m-step", "m-late", "m-buffer", "m-inunder"]) $(id).textContent = "—";
  $("m-session").textContent = "no session";
  drawSpark("s-ttft", []);
  drawSpark("s-lag", []);
}

function onEvent(event) {
  state.events[event.type] = (state.events[event.type] ?? 0) + 1;
  switch (event.type) {
    case "session":
      state.session = event.session;
      state.pipeline = event.pipeline ?? "kame";
      applyPipeline(state.pipeline);
      $("m-session").textContent = `session ${event.session} · ${event.sample_rate / 1000} kHz`;
      setConnection(state.connection);
      break;
    case "queued":
      $("m-session").textContent = `waiting for a free session · position ${event.position}`;
      break;
    case "shutdown":
      showBanner("The server is shutting down", `This session can go on for up to ${Math.round(event.drain_s)} s.`, { tone: "warning" });
      break;
    case "partial":
      state.partial = event.text ?? "";
      state.partialT = event.t;
      renderPartial();
      break;
    case "final":
      addFinal(event);
      break;
    case "oracle_reset":
    case "oracle_append":
    case "oracle_end":
    case "oracle_cancel":
      onOracle(event);
      break;
    case "assistant":
      addWord(event);
      break;
    case "turn_end":
    case "tts_first_audio":
    case "reply_start":
    case "reply_text":
    case "reply_end":
    case "barge_in":
      onReply(event);
      break;
    case "metrics":
      renderMetrics(event);
      break;
    case "error":
      showBanner(`The ${event.source ?? "back-end"} reported an error`, event.text ?? event.message ?? "unknown error", { tone: "warning" });
      break;
    default:
      break;
  }
}

function renderPartial() {
  const text = state.partial.trim();
  ui.partial.hidden = !text;
  ui.partial.replaceChildren();
  if (!text) return;
  const near = nearBottom(ui.userScroll);
  ui.partial.append(
    Object.assign(document.createElement("span"), { className: "time", textContent: formatTime(state.partialT) }),
    Object.assign(document.createElement("span"), { className: "words", textContent: text }),
  );
  ui.userEmpty.hidden = true;
  keepScrolled(ui.userScroll, near);
}

function addFinal(event) {
  const text = (event.text ?? "").trim();
  state.partial = "";
  renderPartial();
  if (!text) return;
  state.finals.push({ t: event.t, text });
  const near = nearBottom(ui.userScroll);
  const li = document.createElement("li");
  li.className = "utterance";
  li.append(
    Object.assign(document.createElement("span"), { className: "time", textContent: formatTime(event.t) }),
    Object.assign(document.createElement("span"), { className: "words", textContent: text }),
  );
  ui.transcript.append(li);
  ui.userEmpty.hidden = true;
  keepScrolled(ui.userScroll, near);
}

const ORACLE_BADGE = { none: "waiting", streaming: "answering", complete: "complete", cancelled: "stopped", interrupted: "interrupted", failed: "failed" };

function onOracle(event) {
  const current = state.oracle;
  const fullText = typeof event.oracle === "string" ? event.oracle : null;
  if (event.type === "oracle_reset") {
    if (current) retireOracle(current, current.status === "cancelled" ? "stopped early" : "replaced");
    state.oracle = { stream: event.stream, t: event.t, text: fullText ?? event.text ?? "", status: "streaming" };
    state.oracles.push(state.oracle);
  } else if (current && event.stream === current.stream) {
    if (event.type === "oracle_append") current.text = fullText ?? current.text + (event.text ?? "");
    else if (event.type === "oracle_end") {
      current.text = fullText || event.text || current.text;
      current.status = "complete";
    } else current.status = "cancelled";
  } else if (event.type === "oracle_cancel") {
    state.droppedAnswers++; // an LLM answer superseded before it was ever fed to the voice
  }
  renderOracle();
}

function retireOracle(oracle, why) {
  const li = document.createElement("li");
  li.className = "oracle-old";
  li.append(
    Object.assign(document.createElement("span"), { className: "time", textContent: formatTime(oracle.t) }),
    Object.assign(document.createElement("span"), { className: "text", textContent: oracle.text || "(no text)" }),
    Object.assign(document.createElement("span"), { className: "why", textContent: why }),
  );
  if (oracle.status !== "cancelled") oracle.status = why;
  ui.oracleHistory.prepend(li);
}

// The cascade's reply in the oracle panel: the LLM's text as it streams, then how the reply ended.
const REPLY_END = { done: "complete", barge_in: "interrupted", error: "failed", closed: "stopped" };

function onReply(event) {
  const current = state.oracle;
  if (event.type === "reply_text") {
    if (!current || current.status !== "streaming") {
      if (current) retireOracle(current, current.status);
      state.oracle = { stream: state.oracles.length + 1, t: event.t, text: "", status: "streaming" };
      state.oracles.push(state.oracle);
    }
    state.oracle.text = event.text ?? "";
  } else if (event.type === "reply_start" && typeof event.latency === "number") {
    state.replyLatencies.push(event.latency); // the cascade's response latency, reply by reply
  } else if (event.type === "reply_end" && current && current.status === "streaming") {
    current.status = REPLY_END[event.reason] ?? event.reason ?? "complete";
  }
  renderOracle();
}

function applyPipeline(name) {
  const p = PIPELINES[name] ?? PIPELINES.kame;
  ui.assistantName.textContent = p.assistant;
  ui.oracleName.textContent = p.panel;
  ui.oracleSub.textContent = p.panelSub;
  ui.pipelineBadge.textContent = p.label;
  ui.pipelineBadge.hidden = !name;
  ui.pipelineBadge.dataset.pipeline = name ?? "";
  const cascade = name === "cascade";
  const tile = (id, label, title) => {
    const el = $(id);
    el.querySelector("dt").textContent = label;
    el.title = title;
  };
  if (cascade) {
    tile("t-lag", "Response latency", "First reply audio played minus the end of your speech (the VAD's stop minus its silence)");
    tile("t-step", "TTS first audio", "Time the reply voice took to synthesise the first chunk");
    tile("t-inunder", "Reply underruns", "Frames that fell silent mid-reply while the voice was still synthesising");
  } else {
    tile("t-lag", "Oracle lag", "Time from an oracle event to the frame that read it");
    tile("t-step", "Step time", "Front-end step time (Mimi encode, LM step, Mimi decode); the budget is 80 ms");
    tile("t-inunder", "Input underruns", "Frames stepped on silence because your audio had not arrived in time");
  }
  renderOracle();
}

function renderOracle() {
  const o = state.oracle;
  const status = o ? o.status : "none";
  ui.oracleCurrent.dataset.status = status;
  ui.oracleBadge.textContent = ORACLE_BADGE[status] ?? status;
  ui.oracleTime.textContent = o ? `since ${formatTime(o.t)} · stream ${o.stream}` : "";
  ui.oracleText.textContent = o ? o.text || "…" : (PIPELINES[state.pipeline ?? ui.pipeline.value] ?? PIPELINES.kame).waiting;
  const title = document.querySelector(".history-title");
  if (state.pipeline === "cascade") {
    title.textContent = "Earlier replies";
    return;
  }
  title.textContent = state.droppedAnswers
    ? `Earlier oracles · ${state.droppedAnswers} LLM request${state.droppedAnswers === 1 ? "" : "s"} abandoned before answering`
    : "Earlier oracles";
}

function addWord(event) {
  const text = (event.text ?? "").trim();
  if (!text) return;
  const near = nearBottom(ui.assistantScroll);
  const last = state.words[state.words.length - 1];
  let turn = ui.assistant.lastElementChild;
  if (!turn || (last && event.t - last.t > NEW_TURN_GAP_S)) {
    turn = document.createElement("p");
    turn.className = "turn";
    ui.assistant.append(turn);
  }
  state.words.push({ t: event.t, text });
  const word = Object.assign(document.createElement("span"), { className: "word", textContent: text, title: formatTime(event.t) });
  if (turn.childNodes.length) turn.append(" ");
  turn.append(word);
  ui.assistantEmpty.hidden = true;
  keepScrolled(ui.assistantScroll, near);
}

function renderMetrics(m) {
  state.metrics = m;
  const fmt = (v, digits = 0) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
  if (m.pipeline === "cascade") {
    renderCascadeMetrics(m, fmt);
    return;
  }
  $("m-ttft").textContent = fmt(m.llm_ttft_ms);
  $("m-lag").textContent = fmt(m.oracle_lag_ms);
  $("m-step").textContent = fmt(m.step_ms, 1);
  $("m-late").textContent = fmt(m.late_frame_pct, 1);
  $("m-frames").textContent = `${m.frames ?? 0} frames · ${m.deadline_misses ?? 0} late`;
  $("m-inunder").textContent = fmt(m.input_underruns);
  const step = Number(m.step_ms ?? 0);
  const bar = $("b-step");
  bar.style.width = `${Math.min(100, (step / 80) * 100)}%`;
  bar.dataset.alert = String(step > 80);
  $("m-late").closest(".tile").dataset.alert = String((m.late_frame_pct ?? 0) > 1);
  for (const [key, value] of [["ttft", m.llm_ttft_ms], ["lag", m.oracle_lag_ms]]) {
    if (value === null || value === undefined) continue;
    const series = state.spark[key];
    series.push(Number(value));
    if (series.length > SPARK_POINTS) series.shift();
    drawSpark(`s-${key}`, series);
  }
}

function renderCascadeMetrics(m, fmt) {
  $("m-ttft").textContent = fmt(m.llm_ttft_ms);
  $("m-lag").textContent = fmt(m.response_latency_ms);
  $("m-step").textContent = fmt(m.tts_ttfb_ms);
  $("b-step").style.width = "0%";
  $("m-late").textContent = m.frames ? fmt((100 * (m.late_frames ?? 0)) / m.frames, 1) : "—";
  $("m-frames").textContent = `${m.frames ?? 0} frames · ${m.replies ?? 0} replies · ${m.barge_ins ?? 0} interrupted`;
  $("m-inunder").textContent = fmt(m.reply_underruns);
  for (const [key, value] of [["ttft", m.llm_ttft_ms], ["lag", m.response_latency_ms]]) {
    if (value === null || value === undefined) continue;
    const series = state.spark[key];
    series.push(Number(value));
    if (series.length > SPARK_POINTS) series.shift();
    drawSpark(`s-${key}`, series);
  }
}

function drawSpark(id, series) {
  const line = $(id).querySelector("polyline");
  if (series.length < 2) {
    line.setAttribute("points", "");
    return;
  }
  const max = Math.max(...series) || 1;
  const min = Math.min(...series);
  const span = max - min || max;
  const points = series.map((v, i) => `${((i / (series.length - 1)) * 100).toFixed(1)},${(22 - ((v - min) / span) * 20).toFixed(1)}`);
  line.setAttribute("points", points.join(" "));
}

function onLevel({ input, output }) {
  // Speech RMS sits around 0.02-0.2: a square-root scale makes the meters move visibly.
  const scale = (x) => Math.min(1, Math.sqrt(x * 4));
  const inLevel = scale(input);
  const outLevel = scale(output);
  ui.talkWrap.style.setProperty("--level", inLevel.toFixed(3));
  ui.talkWrap.style.setProperty("--out", outLevel.toFixed(3));
  ui.meterIn.style.width = `${(inLevel * 100).toFixed(1)}%`;
  ui.meterOut.style.width = `${(outLevel * 100).toFixed(1)}%`;
}

function onPlayback(stats) {
  $("m-buffer").textContent = stats.playbackBufferedMs.toFixed(0);
  $("m-underruns").textContent = `${stats.playbackUnderruns} underrun${stats.playbackUnderruns === 1 ? "" : "s"}`;
}

// ---- start ----------------------------------------------------------------------------------------
async function loadPipelines() {
  // The server says what it offers; with more than one the user picks (the first is the server's default).
  let offered = ["kame"];
  try {
    const response = await fetch(new URL("healthz", location.href), { cache: "no-store" });
    if (response.ok) offered = (await response.json()).pipelines ?? offered;
  } catch {
    /* the connection attempt will explain an unreachable server */
  }
  state.offered = offered;
  ui.pipeline.replaceChildren(
    ...offered.map((name) => Object.assign(document.createElement("option"), { value: name, textContent: PIPELINES[name]?.label ?? name })),
  );
  ui.pipelineChoice.hidden = offered.length < 2;
  const hint = () => {
    ui.pipelineHint.textContent = PIPELINES[ui.pipeline.value]?.hint ?? "";
    if (!state.session) applyPipeline(ui.pipeline.value);
  };
  ui.pipeline.addEventListener("change", hint);
  hint();
}

(async () => {
  await loadPipelines();
  const missing = await missingFeatures();
  if (missing.length) {
    ui.connect.disabled = true;
    showBanner(
      "This browser cannot run the kame client",
      "It needs these features, which are missing here. Recent Chrome, Edge or Firefox on a desktop have them all.",
      { list: missing },
    );
    ui.statusText.textContent = "Unsupported browser";
    ui.status.dataset.state = "error";
    window.kame.missing = missing;
  }
  window.kame.ready = true;
})();
