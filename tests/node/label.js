// Label cells with an sccsa model.onnx from Node.js.
// Usage: node label.js BUNDLE_DIR INPUT.json  ->  prints {"label": [...], "latent": [[...]]}
// INPUT.json: {"counts": [[...G numbers...], ...], "total_counts": [...]} with genes in the
// order of bundle.json's "genes" (Node's onnxruntime cannot read ONNX metadata_props).
const fs = require("fs");
const path = require("path");
const ort = require("onnxruntime-node");

async function main() {
  const [bundleDir, inputPath] = process.argv.slice(2);
  const meta = JSON.parse(fs.readFileSync(path.join(bundleDir, "bundle.json"), "utf8"));
  const input = JSON.parse(fs.readFileSync(inputPath, "utf8"));
  const n = input.counts.length;
  const g = meta.genes.length;
  const counts = new Float32Array(n * g);
  input.counts.forEach((row, i) => counts.set(row, i * g));
  const session = await ort.InferenceSession.create(path.join(bundleDir, "model.onnx"));
  const out = await session.run({
    counts: new ort.Tensor("float32", counts, [n, g]),
    total_counts: new ort.Tensor("float32", Float32Array.from(input.total_counts), [n, 1]),
  });
  const labels = Array.from(out.label.data, (v) => Number(v)); // int64 arrives as BigInt64Array
  const latentDim = out.latent.dims[1];
  const latent = [];
  for (let i = 0; i < n; i++) latent.push(Array.from(out.latent.data.slice(i * latentDim, (i + 1) * latentDim)));
  const names = meta.cluster_names ? labels.map((k) => meta.cluster_names[k]) : null;
  console.log(JSON.stringify({ label: labels, name: names, latent }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
