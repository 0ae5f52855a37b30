// The explorer's page: two run panels (the second for comparing), each a form, the article's
// diagram, and the views of its run, filled from the server's stream of events (server.py).
"use strict";

const panels = [];
let model = null;

async function start() {
  model = await (await fetch("/api/model")).json();
  const d = model.defaults;
  document.getElementById("model").textContent =
    `${model.name}, ${d.width}×${d.height}, ${d.steps} steps by default`;
  for (const name of ["A", "B"]) panels.push(makePanel(name));
  panels[1].root.hidden = true;
  const compare = document.getElementById("compare");
  const runBoth = document.getElementById("run-both");
  compare.addEventListener("change", () => {
    if (compare.checked) copySettings(panels[0], panels[1]);
    panels[1].root.hidden = !compare.checked;
    runBoth.hidden = !compare.checked;
    document.getElementById("runs").classList.toggle("comparing", compare.checked);
  });
  runBoth.addEventListener("click", () => panels.forEach((panel) => run(panel)));
}

function makePanel(name) {
  const root = document.getElementById("panel-template").content.firstElementChild.cloneNode(true);
  root.id = `run-${name.toLowerCase()}`;
  root.querySelector(".panel-title").textContent = `Run ${name}`;
  const form = root.querySelector("form");
  const d = model.defaults;
  fill(form.scheduler, model.schedulers, d.scheduler);
  fill(form.size, model.sizes.map((s) => `${s}×${s}`), `${d.width}×${d.height}`);
  Object.assign(form.steps, { value: d.steps, max: model.limits.steps });
  Object.assign(form.guidance, { value: d.guidance, max: model.limits.guidance });
  const panel = { name, root, form, steps: [], controller: null, follow: true };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run(panel);
  });
  root.querySelector(".cancel").addEventListener("click", () => panel.controller && panel.controller.abort());
  const scrub = root.querySelector(".scrub");
  scrub.addEventListener("input", () => {
    panel.follow = Number(scrub.value) === panel.steps.length - 1;
    showStep(panel, Number(scrub.value));
    if (!document.getElementById("runs").classList.contains("comparing")) return;
    for (const other of panels) if (other !== panel && other.steps.length) scrubTo(other, Number(scrub.value));
  });
  for (const button of root.querySelectorAll(".diagram button")) {
    button.addEventListener("click", () => {
      const box = root.querySelector(`.box[data-box="${button.dataset.box}"]`);
      box.hidden = !box.hidden;
      button.classList.toggle("closed", box.hidden);
    });
  }
  form.prompt.addEventListener("input", debounce(() => showTokens(panel), 300));
  document.getElementById("runs").append(root);
  showTokens(panel);
  return panel;
}

function fill(select, values, chosen) {
  for (const value of values) select.add(new Option(value, value, false, String(value) === String(chosen)));
}

function copySettings(from, to) {
  for (const field of ["prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "size", "strength"]) {
    to.form[field].value = from.form[field].value;
  }
  showTokens(to);
}

function debounce(work, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(work, ms);
  };
}

async function request(form) {
  const size = Number(form.size.value.split("×")[0]);
  const body = {
    prompt: form.prompt.value,
    negative_prompt: form.negative_prompt.value,
    seed: Number(form.seed.value),
    steps: Number(form.steps.value),
    guidance: Number(form.guidance.value),
    scheduler: form.scheduler.value,
    width: size,
    height: size,
  };
  const file = form.image.files[0];
  if (file) Object.assign(body, { image: await dataUrl(file), strength: Number(form.strength.value) });
  return body;
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function showTokens(panel) {
  const response = await fetch("/api/tokens", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: panel.form.prompt.value }),
  });
  if (response.ok) showTokenList(panel, await response.json());
}

function showTokenList(panel, { tokens, cut }) {
  panel.root.querySelector(".cut").textContent = cut ? `Past 75 tokens the text encoder reads nothing: "${cut}" is cut off.` : "";
  const list = panel.root.querySelector(".tokens");
  list.replaceChildren(
    ...tokens.map(({ piece, id }) => {
      const item = document.createElement("li");
      item.innerHTML = "<span class=piece></span><span class=id></span>";
      item.firstChild.textContent = piece;
      item.lastChild.textContent = id;
      return item;
    }),
  );
}

// ------------------------------------------------------------------ a run, streamed

async function run(panel) {
  if (panel.controller) panel.controller.abort();
  const controller = new AbortController();
  Object.assign(panel, { controller, steps: [], follow: true, started: performance.now(), firstStep: null });
  panel.root.querySelector(".without-caption").textContent = panel.form.negative_prompt.value
    ? `ε with the negative prompt "${panel.form.negative_prompt.value}"`
    : "ε without the prompt (the empty prompt)";
  Object.assign(panel.root.querySelector(".scrub"), { max: 0, value: 0, disabled: true }); // until the first step
  setRunning(panel, true);
  setStatus(panel, "starting…");
  try {
    const response = await fetch("/api/run", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(await request(panel.form)),
      signal: controller.signal,
    });
    if (!response.ok) {
      const { error } = await response.json();
      setStatus(panel, `refused: ${error}`, "error");
      return;
    }
    await readEvents(response, (event) => handle(panel, event));
  } catch (error) {
    setStatus(panel, error.name === "AbortError" ? "cancelled" : `failed: ${error.message}`, "error");
  } finally {
    if (panel.controller === controller) {
      panel.controller = null;
      setRunning(panel, false);
    }
  }
}

async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (message.startsWith("data: ")) onEvent(JSON.parse(message.slice(6)));
    }
  }
}

function handle(panel, event) {
  const seconds = () => ((performance.now() - panel.started) / 1000).toFixed(2);
  if (event.type === "queued") setStatus(panel, `waiting: ${event.position} run(s) ahead`);
  else if (event.type === "prompt") showPrompt(panel, event);
  else if (event.type === "step") {
    if (panel.firstStep === null) panel.firstStep = seconds();
    panel.steps.push(event);
    const scrub = panel.root.querySelector(".scrub");
    Object.assign(scrub, { max: event.count - 1, disabled: false });
    panel.root.querySelector(".progress").value = (event.index + 1) / event.count;
    setStatus(panel, `step ${event.index + 1} of ${event.count} (first step after ${panel.firstStep} s)`);
    if (panel.follow) scrubTo(panel, panel.steps.length - 1);
  } else if (event.type === "done") {
    const last = panel.steps[panel.steps.length - 1];
    panel.root.querySelector(".final").src = last.latents;
    panel.root.querySelector(".final-caption").textContent = `after ${last.count} steps`;
    setStatus(panel, `done in ${seconds()} s (first step after ${panel.firstStep} s)`, "done");
  } else if (event.type === "error") setStatus(panel, `error: ${event.message}`, "error");
}

function showPrompt(panel, event) {
  showTokenList(panel, event);
  panel.root.querySelector(".embeddings").src = event.embeddings;
  panel.root.querySelector(".embeddings-caption").textContent =
    `the text encoder's output: ${event.shape[0]} vectors of ${event.shape[1]} numbers (one row each)`;
}

function scrubTo(panel, index) {
  const clamped = Math.min(index, panel.steps.length - 1);
  panel.root.querySelector(".scrub").value = clamped;
  showStep(panel, clamped);
}

function showStep(panel, index) {
  const step = panel.steps[index];
  const root = panel.root;
  root.querySelector(".step-label").textContent =
    `${step.index + 1} of ${step.count}: timestep ${+step.timestep.toFixed(2)}, noise level √(1−ᾱ) = ${step.noise_level.toFixed(3)}`;
  for (const view of ["latents", "x0", "noise", "channels"]) root.querySelector(`.view-${view}`).src = step[view];
  const guidance = root.querySelector(".guidance");
  guidance.hidden = !step.guidance;
  if (step.guidance) {
    for (const part of ["without", "with", "difference", "guided"]) {
      root.querySelector(`.view-${part}`).src = step.guidance[part];
    }
    root.querySelector(".difference-caption").textContent =
      `with − without (own scale, ±${step.guidance.difference_range.toFixed(3)}; the others ±${step.guidance.range.toFixed(2)})`;
  }
  root.querySelector(".attention").replaceChildren(
    ...step.attention.tokens.map(({ token, share, map }) => {
      const figure = document.createElement("figure");
      figure.innerHTML = "<div class=stack><img class=under alt=''><img class=map alt='attention map'></div><figcaption></figcaption>";
      figure.querySelector(".under").src = step.x0; // the map over the picture this step predicts
      figure.querySelector(".map").src = map;
      figure.lastChild.textContent = `${token} ${(100 * share).toFixed(1)}%`;
      return figure;
    }),
  );
  root.querySelector(".attention-note").dataset.scale = `scale 0 … ${step.attention.scale.toFixed(3)}`;
}

function setRunning(panel, running) {
  panel.root.querySelector(".run").disabled = running;
  panel.root.querySelector(".cancel").disabled = !running;
  if (running) panel.root.querySelector(".progress").value = 0;
}

function setStatus(panel, text, kind = "") {
  const status = panel.root.querySelector(".status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

start();
