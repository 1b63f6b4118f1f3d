// The search page: sends the query to /api/search and shows its hits; no framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

function format(value, digits = 3) {
  if (value === null || value === undefined) return "unknown";
  return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3)
    ? value.toExponential(digits - 1)
    : value.toPrecision(digits);
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function search(fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  form.append("k", $("k").value);
  form.append("pixel_size", $("pixel-size").value);
  setStatus("searching…");
  document.body.dataset.state = "busy";
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    show(answer);
    setStatus(`${answer.hits.length} nearest images`);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  }
}

function term(list, name, value) {
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  dd.dataset.name = name;
  list.append(dt, dd);
}

function show({ query, hits, prediction }) {
  $("query").hidden = false;
  $("query-image").src = query.preview;
  $("query-name").textContent = query.name;
  $("query-sample").textContent = query.sample;
  $("query-reservoir").textContent = query.reservoir;
  $("figure").href = query.figure;
  const list = $("prediction");
  list.replaceChildren();
  if (prediction === null) {
    term(list, "predicted", "nothing (this model has no regression head)");
  } else {
    term(list, "predicted porosity", format(prediction.porosity));
    const unit = prediction.scaled ? ` (scaled: ${prediction.permeability_unit})` : ` ${prediction.permeability_unit}`;
    term(list, "predicted permeability", format(prediction.permeability) + unit);
    term(list, "pixel size", prediction.pixel_size === null ? "unknown: give one above" : `${prediction.pixel_size} µm`);
  }
  const template = $("hit-template");
  $("hits").replaceChildren(
    ...hits.map((hit) => {
      const card = template.content.firstElementChild.cloneNode(true);
      card.dataset.imageId = hit.image_id;
      card.title = `${hit.name}: search with this image`;
      card.querySelector("img").src = hit.thumbnail;
      card.querySelector("img").alt = hit.name;
      card.querySelector(".rank").textContent = `#${hit.rank}`;
      card.querySelector(".distance").textContent = `distance ${format(hit.distance, 4)}`;
      card.querySelector(".sample").textContent = hit.sample;
      card.querySelector(".reservoir").textContent = `reservoir ${hit.reservoir}`;
      card.querySelector(".truth").textContent =
        `φ ${format(hit.true_porosity)} · k ${format(hit.true_permeability)}`;
      card.addEventListener("click", () => search({ image_id: hit.image_id }));
      return card;
    })
  );
}

function searchFile(file) {
  if (file) search({ image: file });
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => searchFile(event.target.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    searchFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  fetch("/api/health")
    .then((response) => response.json())
    .then((health) => {
      $("k").max = health.max_hits;
      $("health").textContent =
        `${health.model.model} ${health.model.backbone} (step ${health.model.step}), ${health.images} images`;
    });
}

setUp();
