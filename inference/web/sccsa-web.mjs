// sccsa in the browser: label cells with an sccsa bundle's model.onnx through ONNX Runtime Web
// (WebAssembly). Nothing leaves the page. Serve this folder with onnxruntime-web's dist/ folder
// as ./ort/ (see README.md, "From a web page").
import * as ort from "./ort/ort.wasm.min.mjs";

// WebAssembly threads need a cross-origin-isolated page; one thread works on any static host.
ort.env.wasm.numThreads = 1;

/**
 * Labels of cells from raw counts, as sccsa-infer computes them.
 * meta: the bundle's bundle.json; model: model.onnx (ArrayBuffer or Uint8Array);
 * counts: one array per cell of raw counts, genes in the order of meta.genes;
 * totalCounts: each cell's library size over all its genes.
 * Returns {label, name, confidence, unassigned, latent}: a cell is unassigned when it is farther
 * from its centroid than the cluster's training threshold, or has no counts in the model's genes.
 */
export async function labelCells(meta, model, counts, totalCounts) {
  const n = counts.length;
  const g = meta.genes.length;
  if (n === 0) throw new Error("no cells to label");
  if (totalCounts.length !== n) {
    throw new Error(`total_counts has ${totalCounts.length} values for ${n} cells; give one per cell`);
  }
  const flat = new Float32Array(n * g);
  const empty = new Array(n).fill(true);
  counts.forEach((row, i) => {
    if (row.length !== g) {
      throw new Error(`cell ${i} has ${row.length} values but the model reads ${g} genes ` +
                      `(bundle.json "genes", in that order)`);
    }
    flat.set(row, i * g);
    empty[i] = !row.some((value) => value > 0);
  });
  const session = await ort.InferenceSession.create(model instanceof Uint8Array ? model : new Uint8Array(model));
  const out = await session.run({
    counts: new ort.Tensor("float32", flat, [n, g]),
    total_counts: new ort.Tensor("float32", Float32Array.from(totalCounts), [n, 1]),
  });
  const label = Array.from(out.label.data, (v) => Number(v)); // int64 arrives as BigInt64Array
  const k = out.prob.dims[1];
  const d = out.latent.dims[1];
  const confidence = [];
  const latent = [];
  for (let i = 0; i < n; i++) {
    confidence.push(Math.max(...out.prob.data.slice(i * k, (i + 1) * k)));
    latent.push(Array.from(out.latent.data.slice(i * d, (i + 1) * d)));
  }
  const unassigned = label.map((c, i) => empty[i] || out.distance.data[i] > Math.fround(meta.thresholds[c]));
  const name = meta.cluster_names ? label.map((c) => meta.cluster_names[c]) : null;
  return { label, name, confidence, unassigned, latent };
}

function show(result) {
  const table = document.getElementById("result");
  table.replaceChildren();
  const head = table.insertRow();
  for (const title of ["cell", "cluster", "name", "confidence", "unassigned"]) {
    head.appendChild(Object.assign(document.createElement("th"), { textContent: title }));
  }
  result.label.forEach((c, i) => {
    const row = table.insertRow();
    for (const value of [i, c, result.name ? result.name[i] : "", result.confidence[i].toFixed(3), result.unassigned[i]]) {
      row.insertCell().textContent = String(value);
    }
  });
}

async function fetchOk(url, kind) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`could not fetch ${url} (${response.status})`);
  return kind === "json" ? response.json() : response.arrayBuffer();
}

async function run(meta, model, cells) {
  const status = document.getElementById("status");
  status.textContent = `labelling ${cells.counts.length} cells…`;
  const result = await labelCells(meta, model, cells.counts, cells.total_counts);
  show(result);
  status.textContent = `labelled ${result.label.length} cells (${result.unassigned.filter(Boolean).length} unassigned)`;
  return result;
}

// ?bundle=FOLDER_URL&cells=JSON_URL labels without clicks; &report=URL also POSTs the result there.
async function fromQuery(params) {
  const folder = params.get("bundle").replace(/\/?$/, "/");
  const [meta, model, cells] = await Promise.all([
    fetchOk(folder + "bundle.json", "json"), fetchOk(folder + "model.onnx"), fetchOk(params.get("cells"), "json"),
  ]);
  const result = await run(meta, model, cells);
  if (params.get("report")) {
    await fetch(params.get("report"), { method: "POST", body: JSON.stringify(result) });
  }
}

async function fromFiles() {
  const file = (id) => document.getElementById(id).files[0];
  if (!file("bundle-json") || !file("model-onnx") || !file("cells")) {
    throw new Error("choose bundle.json, model.onnx and a cells .json file first");
  }
  const meta = JSON.parse(await file("bundle-json").text());
  const cells = JSON.parse(await file("cells").text());
  await run(meta, await file("model-onnx").arrayBuffer(), cells);
}

function reportError(error) {
  document.getElementById("status").textContent = `error: ${error.message}`;
  const params = new URLSearchParams(window.location.search);
  if (params.get("report")) fetch(params.get("report"), { method: "POST", body: JSON.stringify({ error: error.message }) });
}

if (typeof document !== "undefined") {
  const params = new URLSearchParams(window.location.search);
  document.getElementById("run").addEventListener("click", () => fromFiles().catch(reportError));
  if (params.get("bundle") && params.get("cells")) fromQuery(params).catch(reportError);
}
