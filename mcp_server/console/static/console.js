// The console's pages, live. Every value from a task (inputs, outputs, errors, labels, messages)
// goes into the page through textContent, never as markup.
"use strict";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// ---- graphs (Mermaid, from the same code as `mcp workflow graph`) ----------------------------
// Mermaid (3.5 MB) is loaded when the first graph is drawn, not before the page's own script:
// the event stream starts at once, and the page shows events while Mermaid is still parsing.
let mermaidLoading = null;
let graphCounter = 0;

function loadMermaid() {
  mermaidLoading ??= new Promise((resolve) => {
    const script = document.createElement("script");
    script.src = "/static/vendor/mermaid.min.js";
    script.onload = () => {
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
      resolve(true);
    };
    script.onerror = () => resolve(false);
    document.head.append(script);
  });
  return mermaidLoading;
}

async function drawGraph(target, source) {
  if (!(await loadMermaid())) {  // the bundle is installed by `make`; without it, show the source
    target.replaceChildren(el("pre", "value", source), el("p", "dim", "Mermaid is not installed here: run `make console-assets`."));
    return;
  }
  graphCounter += 1;
  const { svg } = await window.mermaid.render(`graph-${graphCounter}`, source);
  // Markup from Mermaid alone: in strict mode it sanitizes the SVG it makes (with DOMPurify), the
  // labels in it were escaped by the server (graph.mermaid_text), and the page's CSP runs no inline script.
  target.innerHTML = svg;
}

// ---- /tasks ------------------------------------------------------------------------------
function tasksPage() {
  document.getElementById("bulk-cancel")?.addEventListener("submit", (event) => {
    const question = event.submitter?.id === "cancel-all"
      ? "Cancel every task this filter selects, all of them, in the background? This cannot be undone."
      : "Cancel every task this filter shows (up to 100 per click)? This cannot be undone.";
    if (!window.confirm(question)) event.preventDefault();
  });
  const table = document.getElementById("task-table");
  const total = document.getElementById("total");
  const shown = Number(total.textContent);
  const checked = [...document.querySelectorAll('#filters input[name="status"]:checked')].map((box) => box.value);
  if (table.dataset.label) return; // tasks found by a label: no live counts (each would be a scan)
  const stream = new EventSource(`/tasks/counts?workflow=${encodeURIComponent(table.dataset.workflow || "")}`);
  stream.addEventListener("counts", (message) => {
    const counts = JSON.parse(message.data);
    for (const [status, count] of Object.entries(counts)) {
      const badge = document.querySelector(`[data-count="${status}"]`);
      if (badge) badge.textContent = String(count);
    }
    const matching = Object.entries(counts).filter(([status]) => checked.length === 0 || checked.includes(status))
      .reduce((sum, [, count]) => sum + count, 0);
    total.textContent = String(matching);
    document.getElementById("fresh").hidden = matching === shown;
  });
}

// ---- /tasks/{id} ---------------------------------------------------------------------------
const STATUS_OF_EVENT = {
  STEP_STARTED: "running", STEP_COMPLETED: "completed", STEP_FAILED: "failed", STEP_RETRYING: "retrying", STEP_WAITING: "waiting",
  STEP_SUSPENDED: "waiting",
};
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);

class RunTree {
  // The CLI's live tree (mcp_server/cli/tree.py), as DOM: one line per node, nested by step path.
  constructor(root) {
    this.root = root;
    this.lines = new Map();
  }

  line(path) {
    return this.lines.get(path);
  }

  start(event) {
    const path = event.step_path;
    const parentPath = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
    const parent = this.lines.get(parentPath);
    const list = parent ? parent.children : this.root;
    const item = el("li", "node running");
    item.dataset.path = path;
    const row = el("div", "row");
    const parts = {
      icon: el("span", "icon"), name: el("span", "name", path.split("/").pop()), protocol: el("span", "protocol dim", event.protocol ? `[${event.protocol}]` : ""),
      attempt: el("span", "attempt"), took: el("span", "took dim"), note: el("span", "note dim"),
    };
    row.append(parts.icon, parts.name, parts.protocol, parts.attempt, parts.took, parts.note);
    const children = el("ul");
    item.append(row, children);
    list.append(item);
    const line = { item, children, parts, started: Date.parse(event.time), attempt: 1 };
    this.lines.set(path, line);
    return line;
  }

  apply(event) {
    let line = event.step_path ? this.line(event.step_path) : undefined;
    if (event.type === "STEP_STARTED") {
      if (line) {
        line.started = Date.parse(event.time);  // a retry: the same line, timed from this attempt
      } else {
        line = this.start(event);
      }
      this.mark(line, event.data?.retry_time ? "retrying" : "running");  // resumed inside a retry's backoff
    } else if (line && event.type === "STEP_COMPLETED") {
      line.attempt = Math.max(line.attempt, event.attempt || 1);
      this.finish(line, event, "completed");
    } else if (line && event.type === "STEP_FAILED") {
      this.finish(line, event, "failed");
      line.parts.note.textContent = event.message;
    } else if (line && event.type === "STEP_RETRYING") {
      line.attempt = (event.attempt || 1) + 1;
      this.mark(line, "retrying");
      line.parts.note.textContent = event.message;
    } else if (line && (event.type === "STEP_WAITING" || event.type === "STEP_SUSPENDED")) {
      this.mark(line, "waiting");
      line.parts.note.textContent = event.message;
    } else if (line && (event.type === "FALLBACK_USED" || event.type === "PROGRESS")) {
      this.mark(line, "running");
      line.parts.note.textContent = event.message;
    } else if (line && (event.type === "TRANSITION_TAKEN" || event.type === "SUPERVISOR_DECISION")) {
      line.parts.note.textContent = event.message;
    } else if (event.type === "CANCELLED" || event.type === "CLEANING_UP") {  // the clean-up's handlers start after it
      for (const open of this.lines.values()) {
        if (["running", "retrying", "waiting"].some((s) => open.item.classList.contains(s))) this.mark(open, "cancelled");
      }
    }
    if (line) line.parts.attempt.textContent = line.attempt > 1 ? `attempt ${line.attempt}` : "";
    return line;
  }

  mark(line, status) {
    line.item.classList.remove("running", "completed", "failed", "retrying", "waiting", "cancelled");
    line.item.classList.add(status);
    line.item.dataset.status = status;
  }

  finish(line, event, status) {
    this.mark(line, status);
    const took = Date.parse(event.time) - line.started;
    if (Number.isFinite(took)) line.parts.took.textContent = `${took} ms`;
  }
}

function stepRow(path, protocol) {
  const body = document.querySelector("#steps tbody");
  let row = [...body.rows].find((r) => r.dataset.path === path);
  if (row) return row;
  row = document.createElement("tr");
  row.dataset.path = path;
  const cells = [el("td", "mono path", path), el("td", "", protocol), el("td"), el("td", "attempts", "1"), el("td", "took"), el("td"), el("td"), el("td", "rerun-here")];
  cells[2].append(el("span", "badge running step-status", "running"));
  cells[5].append(el("pre", "value input"));
  cells[6].append(el("pre", "value output"), el("p", "problem error"));
  row.append(...cells);
  body.append(row);
  document.getElementById("step-count").textContent = String(body.rows.length);
  return row;
}

function setValue(pre, value, ref, taskId, path, field) {
  if (value !== null && value !== undefined) {
    pre.textContent = value;
  } else if (ref) {
    const link = el("a", "", "read it");
    link.href = `/tasks/${encodeURIComponent(taskId)}/value?path=${encodeURIComponent(path)}&field=${field}`;
    pre.replaceChildren(document.createTextNode(`${ref.size_bytes} bytes: `), link);
  }
}

// A step waiting out a retry's backoff says which attempt is due and when (STEP_RETRYING, or
// STEP_STARTED of a step resumed inside its backoff); anything else the step does next ends that wait.
const RETRY_ENDS = new Set(["STEP_RETRYING", "STEP_STARTED", "FALLBACK_USED", "STEP_COMPLETED", "STEP_FAILED"]);

function showRetry(row, event) {
  row.querySelector(".retry")?.remove();
  const due = event.data?.retry_time;
  if (!due || (event.type !== "STEP_RETRYING" && event.type !== "STEP_STARTED")) return;
  const note = el("span", "dim retry", `retry ${(event.attempt || 1) + 1} at `);
  const when = el("time", "", due);
  when.setAttribute("datetime", due);
  note.append(when);
  row.querySelector(".step-status").parentElement.append(" ", note);
}

async function refreshStep(taskId, path, row) {
  try {
    const values = await fetchJson(`/tasks/${encodeURIComponent(taskId)}/step.json?path=${encodeURIComponent(path)}`);
    setValue(row.querySelector("pre.input"), values.input, values.input_ref, taskId, path, "input");
    setValue(row.querySelector("pre.output"), values.output, values.output_ref, taskId, path, "output");
  } catch (error) {
    row.querySelector("p.error").textContent = `could not load the step's values: ${error.message}`;
  }
}

// The event table shows a task's latest EVENT_ROWS events: a log may hold hundreds of thousands
// (WatchTask and `mcp task watch` give them all); the tree and the steps follow every one. A row
// above them says how many earlier ones it leaves out, and shows them a thousand at a time.
const EVENT_ROWS = 1000;

function eventRow(event) {
  const row = document.createElement("tr");
  row.dataset.sequence = String(event.sequence);
  row.className = event.type.toLowerCase();
  for (const value of [event.sequence, event.time, event.type, event.step_path, event.protocol, event.attempt || "", event.message]) {
    row.append(el("td", "", value));
  }
  return row;
}

function appendEvent(body, event) {
  body.append(eventRow(event));
  const note = body.rows[0].classList.contains("left-out") ? 1 : 0;
  if (body.rows.length - note > EVENT_ROWS) {
    body.rows[note].remove();
    noteEarlier(body);
  }
}

// Sequences start at 1 and have no gaps: the events before the first row are those left out.
function noteEarlier(body, problem = "") {
  const first = body.querySelector("tr[data-sequence]");
  const hidden = first ? Number(first.dataset.sequence) - 1 : 0;
  let note = body.rows[0]?.classList.contains("left-out") ? body.rows[0] : null;
  if (!hidden) {
    note?.remove();
    return;
  }
  if (!note) {
    note = el("tr", "left-out");
    const cell = el("td", "dim");
    cell.colSpan = 7;
    const button = el("button", "earlier", `show ${EVENT_ROWS.toLocaleString("en")} earlier`);
    button.type = "button";
    button.addEventListener("click", () => showEarlier(body, button));
    cell.append(el("span", "", ""), " ", button);
    note.append(cell);
    body.prepend(note);
  }
  note.querySelector("span").textContent = problem || `${hidden} earlier events are not shown here`;
}

async function showEarlier(body, button) {
  const first = body.querySelector("tr[data-sequence]");
  button.disabled = true;
  let problem = "";
  try {
    const page = await fetchJson(`/tasks/${encodeURIComponent(body.dataset.task)}/earlier.json?before=${first.dataset.sequence}`);
    first.before(...page.events.map(eventRow));
  } catch (error) {
    problem = `could not load earlier events: ${error.message}`;
  }
  button.disabled = false;
  noteEarlier(body, problem);
}

// A task whose every branch waits parks a moment after the last one began to wait, and no event
// says so: while a page shows it running with a step waiting for an answer, it asks, less and
// less often, until the task's status changes.
async function untilParked(taskId) {
  for (let delay = 250; ; delay = Math.min(2 * delay, 5000)) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    const task = await fetchJson(`/tasks/${encodeURIComponent(taskId)}/task.json`).catch(() => null);
    if (task && task.status !== "RUNNING") return refreshHeader(taskId);
    if (document.getElementById("status").textContent !== "RUNNING") return;  // the stream said so first
  }
}

async function refreshHeader(taskId) {
  const task = await fetchJson(`/tasks/${encodeURIComponent(taskId)}/task.json`);
  const status = document.getElementById("status");
  status.textContent = task.status;
  status.className = `badge ${task.status.toLowerCase()}`;
  document.getElementById("started").textContent = task.started;
  document.getElementById("ended").textContent = task.ended;
  document.getElementById("took").textContent = task.duration_ms === null ? "" : `${task.duration_ms} ms`;
  const failure = document.getElementById("task-error");
  failure.textContent = task.error ? task.error.message : "";
  failure.hidden = !task.error;
  setValue(document.getElementById("result"), task.result, task.result_ref, taskId, "", "output");
  if (task.terminal) {
    document.getElementById("cancel-form")?.remove();
    const deleting = document.getElementById("delete-form");
    if (deleting) deleting.hidden = false;
    offerReruns(taskId);
  }
}

// Once the task has ended, every step offers "rerun from here" (the page, loaded again, shows the form).
function offerReruns(taskId) {
  for (const row of document.querySelectorAll("#steps tbody tr")) {
    const cell = row.querySelector("td.rerun-here");
    if (!cell || cell.firstChild) continue;
    const link = el("a", "", "rerun from here");
    link.href = `/tasks/${encodeURIComponent(taskId)}?rerun=${encodeURIComponent(row.dataset.path)}#rerun`;
    cell.append(link);
  }
}

function taskPage() {
  const section = document.getElementById("task");
  const taskId = section.dataset.taskId;
  const liveAfter = Number(section.dataset.lastSequence);  // events after this one arrive live, not in the replay
  const tree = new RunTree(document.getElementById("tree"));
  const log = document.querySelector("#events tbody");
  log.dataset.task = taskId;
  const graph = document.getElementById("graph");
  const latencies = [];
  window.mcpConsole = { latencies };
  document.getElementById("delete-form")?.addEventListener("submit", (event) => {
    if (!window.confirm(`Delete task ${taskId} with its steps, events and values? This cannot be undone.`)) event.preventDefault();
  });
  // Drawing a graph keeps the page busy for a moment: while the task runs it is redrawn at most
  // every 5 s, when the browser is idle, so that events are never queued behind it.
  let graphDue = null;
  const redrawGraph = async () => {
    graphDue = null;
    const response = await fetch(graph.dataset.source, { credentials: "same-origin" });
    if (response.ok) await drawGraph(graph, await response.text());
  };
  const whenIdle = (work) => (window.requestIdleCallback ? requestIdleCallback(work, { timeout: 5000 }) : setTimeout(work, 50));
  const scheduleGraph = (delay) => {
    if (graphDue === null) graphDue = setTimeout(() => whenIdle(redrawGraph), delay);
  };
  // Agents' conversations are drawn again (from the server, escaped there) a second after a step
  // inside a shown agent ends (or any step, while fewer agents are shown than may be), at most once
  // a second, and at the task's end.
  const talks = document.getElementById("conversations");
  const concernsTalks = (path) => {
    const shown = [...talks.querySelectorAll(".conversation")];
    return shown.length < Number(talks.dataset.maxAgents) || shown.some((c) => path.startsWith(`${c.dataset.agent}/`));
  };
  let talksDue = null;
  const redrawTalks = async () => {
    talksDue = null;
    const response = await fetch(talks.dataset.source, { credentials: "same-origin" });
    if (!response.ok) return;
    talks.innerHTML = await response.text();
    talks.hidden = !talks.querySelector(".conversation");
  };
  const scheduleTalks = (delay) => {
    if (talks && talksDue === null) talksDue = setTimeout(redrawTalks, delay);
  };
  // The first drawing (which loads Mermaid) comes before the event stream opens, so that no live
  // event waits behind it; events written meanwhile arrive in the stream's replay.
  if (document.getElementById("status").textContent === "RUNNING" && document.querySelector("form.answer")) untilParked(taskId);
  const firstGraph = Promise.race([redrawGraph().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 3000))]);
  firstGraph.then(() => follow());

  function follow() {
    const stream = new EventSource(`/tasks/${encodeURIComponent(taskId)}/events`);
    let listeningSince = Infinity;  // events written after this were shown by a page already listening
    stream.addEventListener("open", () => {
      listeningSince = Math.min(listeningSince, Date.now());
    });
    stream.addEventListener("task", (message) => {
      const event = JSON.parse(message.data);
      appendEvent(log, event);
      const line = tree.apply(event);
      const status = event.type === "STEP_STARTED" && event.data?.retry_time ? "retrying" : STATUS_OF_EVENT[event.type];
      if (event.step_path && status) {
        const row = stepRow(event.step_path, event.protocol);
        const badge = row.querySelector(".step-status");
        badge.textContent = status;
        badge.className = `badge ${status} step-status`;
        // STEP_COMPLETED and STEP_FAILED carry the step's calls in all (a retry's `attempt` counts
        // the calls of one protocol, its fallbacks' apart); the page showed the state up to liveAfter
        if ((event.type === "STEP_COMPLETED" || event.type === "STEP_FAILED") && event.attempt) row.querySelector(".attempts").textContent = String(event.attempt);
        if (event.type === "STEP_COMPLETED" && line) row.querySelector(".took").textContent = line.parts.took.textContent;
        if (event.type === "STEP_FAILED") row.querySelector("p.error").textContent = event.message;
        if (event.type === "STEP_COMPLETED" && event.sequence > liveAfter) refreshStep(taskId, event.step_path, row);
        if (event.type === "STEP_STARTED" || event.type === "STEP_COMPLETED" || event.type === "STEP_FAILED") scheduleGraph(5000);
        if ((event.type === "STEP_COMPLETED" || event.type === "STEP_FAILED") && event.sequence > liveAfter && talks && concernsTalks(event.step_path)) scheduleTalks(1000);
      }
      if ((event.type === "STEP_RETRYING" || event.type === "FALLBACK_USED") && event.step_path && event.sequence > liveAfter) {
        const attempts = stepRow(event.step_path, event.protocol).querySelector(".attempts");
        attempts.textContent = String(Number(attempts.textContent || 1) + 1);  // one more call is coming
      }
      if (event.step_path && event.sequence > liveAfter && RETRY_ENDS.has(event.type)) showRetry(stepRow(event.step_path, event.protocol), event);
      if (event.type === "STEP_COMPLETED" && Date.parse(event.time) >= listeningSince && line) {
        // How long after the event was written the page showed it (the console's latency target).
        const shownAfter = Date.now() - Date.parse(event.time);
        line.item.dataset.shownAfterMs = String(shownAfter);
        latencies.push(shownAfter);
      }
      // A step began to wait for a person, or took its signal, while the page was open: show (or
      // drop) its form. The task parks a moment after its last branch waits, so wait for that.
      const answerForm = event.step_path ? document.querySelector(`form.answer[data-wait="${CSS.escape(event.step_path)}"]`) : null;
      if (event.sequence > liveAfter && ((event.type === "STEP_SUSPENDED" && event.data?.signal && !event.data?.event && !answerForm)
          || (event.type === "SIGNAL_RECEIVED" && answerForm))) {
        setTimeout(() => window.location.reload(), 500);
      }
      if (event.type === "STARTED" && event.sequence > liveAfter) {
        const badge = document.getElementById("status");
        badge.textContent = "RUNNING";
        badge.className = "badge running";
      }
      // A step that ended waits for nobody: drop its form (the page may have been drawn after its
      // signal came and before the step's end was written, so no reload brings that news).
      if ((event.type === "STEP_COMPLETED" || event.type === "STEP_FAILED") && answerForm) answerForm.remove();
      if (TERMINAL.has(event.type)) {
        document.querySelectorAll("form.answer").forEach((form) => form.remove());
        stream.close();
        const badge = document.getElementById("status");
        badge.textContent = event.type;
        badge.className = `badge ${event.type.toLowerCase()}`;
        refreshHeader(taskId);
        clearTimeout(graphDue);
        graphDue = null;
        whenIdle(redrawGraph);
        if (talks) {
          clearTimeout(talksDue);
          redrawTalks();
        }
      }
    });
    stream.addEventListener("end", () => stream.close());
  }
}

// ---- /workflows/{id} -------------------------------------------------------------------------
function workflowPage() {
  const source = document.getElementById("graph-source");
  if (source) drawGraph(document.getElementById("graph"), source.textContent);
}

// ---- /protocols ------------------------------------------------------------------------------
function protocolsPage() {
  const body = document.querySelector("#protocol-table tbody");
  const refresh = async () => {
    try {
      const entries = await fetchJson("/protocols.json");
      const rows = entries.map((p) => {
        const row = document.createElement("tr");
        const name = el("td", "", `${p.name} `);
        name.append(el("span", "dim", p.version));
        const health = el("td");
        health.append(el("span", `badge ${p.health.toLowerCase()}`, p.health.toLowerCase()));
        const breaker = el("td");
        breaker.append(el("span", `badge breaker-${p.breaker.toLowerCase()}`, p.breaker.toLowerCase()));
        row.append(name, el("td", "", p.type.toLowerCase()), el("td", "mono", p.address), health, breaker, el("td", "mono", p.ejected_until),
          el("td", "", p.calls_in_flight), el("td", "", p.capacity), el("td", "", p.description));
        return row;
      });
      if (rows.length) body.replaceChildren(...rows);
      const limits = document.querySelector("#rate-limit-table tbody");
      if (limits) {
        const found = await fetchJson("/rate_limits.json");
        const limitRows = found.map((r) => {
          const row = document.createElement("tr");
          row.dataset.key = r.key;
          row.append(el("td", "mono", r.key), el("td", "", r.limit), el("td", "", r.period), el("td", "", r.burst), el("td", "available", r.available));
          return row;
        });
        if (limitRows.length) limits.replaceChildren(...limitRows);
      }
    } catch (error) {
      // the server is away for a moment: keep what is shown, try again at the next tick
    }
  };
  setInterval(refresh, 3000);
}

const PAGES = { tasks: tasksPage, task: taskPage, workflow: workflowPage, protocols: protocolsPage };
PAGES[document.body.dataset.page]?.();
