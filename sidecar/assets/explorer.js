// The ledger explorer: reads the node's ledger API (/ledger/status, /ledger/blocks/{height})
// and $verify with the API key given (kept for the tab's session only; `#key=…` in the URL
// fills it in without sending it to the server; `#block=H` opens a block, `#type=…&id=…`
// verifies a resource), and shows the chain, its members and
// delegates, the recent blocks with their finality certificates, a block's transactions, and a
// resource's proof step by step. Every value is put in the page as text, never as markup.
"use strict";

const fhirBase = document.body.dataset.fhirBase;
const fromHash = new URLSearchParams(location.hash.slice(1));
let key = fromHash.get("key") || sessionStorage.getItem("fhirseal-key") || "";
if (fromHash.has("key")) {
  // Out of the address bar and the history, now that it is read.
  fromHash.delete("key");
  sessionStorage.setItem("fhirseal-key", key);
  history.replaceState(null, "", location.pathname + (fromHash.toString() ? "#" + fromHash : ""));
}

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function short(hex) {
  return typeof hex === "string" && hex.length > 16 ? hex.slice(0, 16) + "…" : hex;
}

function fail(error) {
  $("error").textContent = String(error.message || error);
  $("error").hidden = false;
}

// The OperationOutcome's diagnostics, or what the answer says.
function why(body, status) {
  const issues = (body && body.issue) || [];
  const said = issues.map((i) => i.diagnostics).filter(Boolean).join("; ");
  return said || "HTTP " + status;
}

async function get(path, accept) {
  const response = await fetch(path, {
    headers: { "X-Api-Key": key, Accept: accept || "application/json" },
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(path + ": " + why(body, response.status));
  return body;
}

function definitions(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    list.append(el("dt", term), el("dd", value));
  }
}

function row(cells, onClick) {
  const tr = el("tr");
  for (const cell of cells) tr.append(el("td", cell));
  if (onClick) {
    tr.className = "row";
    tr.addEventListener("click", onClick);
  }
  return tr;
}

async function showStatus() {
  const status = await get("/ledger/status");
  definitions($("status"), [
    ["institution", status.institution],
    ["chain", status.chain],
    ["blocks", status.blocks],
    ["tip", status.tipHash],
    ["this node", status.role],
    ["epoch", status.epoch],
    ["waiting transactions", status.waitingTransactions],
    ["outbox", `${status.pendingAnchors} anchors, ${status.pendingAccessEvents} access events`],
  ]);
  const delegates = new Set(status.delegates || []);
  const standings = (status.election && status.election.standings) || {};
  const members = new Set([...delegates, ...Object.keys(standings)]);
  const body = $("members").querySelector("tbody");
  body.replaceChildren();
  for (const member of [...members].sort()) {
    const s = standings[member] || {};
    const standing = s.tombstoned ? "tombstoned" : s.jailedUntil ? `jailed until epoch ${s.jailedUntil}` : "in good standing";
    body.append(row([member, delegates.has(member) ? "yes" : "", s.stake ?? "", s.reputation ?? "", standing]));
  }
  return status;
}

async function showBlocks(count) {
  const body = $("blocks").querySelector("tbody");
  body.replaceChildren();
  for (let height = count - 1; height >= Math.max(0, count - 12); height--) {
    const block = await get("/ledger/blocks/" + height);
    const certificate = block.certificate || {};
    body.append(
      row(
        [block.height, block.time, short(block.hash), short(block.producer), block.transactionCount,
         certificate.round, (certificate.precommits || []).length],
        () => showBlock(block),
      ),
    );
  }
}

function showBlock(block) {
  $("block").hidden = false;
  $("block-height").textContent = block.height;
  definitions($("block-header"), [
    ["hash", block.hash],
    ["previous", block.previous],
    ["time", block.time],
    ["producer", block.producer],
    ["epoch", block.epoch],
    ["transaction root", block.transactionRoot],
  ]);
  const certificate = $("block-certificate");
  certificate.replaceChildren();
  for (const p of (block.certificate && block.certificate.precommits) || []) {
    const item = el("li");
    item.append("precommit by ", el("code", p.delegate), " in round " + block.certificate.round + ": ", el("code", short(p.signature)));
    certificate.append(item);
  }
  const body = $("block-transactions").querySelector("tbody");
  body.replaceChildren();
  for (const tx of block.transactions || []) {
    const items = tx.entries ? tx.entries.length + " anchors"
      : tx.events ? tx.events.length + " access events"
      : tx.eventsWithheld ? tx.count + " access events (withheld)"
      : tx.beacon ? tx.beacon.length + " beacon items"
      : tx.candidate ? "ballot for " + tx.candidate
      : tx.evidence ? tx.evidence.length + " evidence"
      : tx.lastCommit ? (tx.lastCommit.precommits || []).length + " precommits"
      : tx.grants ? tx.grants.map((g) => "grant of Consent/" + g.consent + " to " + g.grantee).join(", ")
      : tx.revocations ? tx.revocations.map((r) => "revocation of Consent/" + r.consent).join(", ")
      : tx.erasures ? tx.erasures.length + " erasures"
      : "";
    body.append(row([tx.kind, tx.institution || "", short(tx.batch || ""), items, short(tx.hash)]));
  }
}

function parameter(parameters, name) {
  return (parameters.parameter || []).find((p) => p.name === name);
}

function value(p) {
  if (!p) return undefined;
  for (const [k, v] of Object.entries(p)) if (k.startsWith("value")) return v;
  return undefined;
}

function part(p, name) {
  return value(((p && p.part) || []).find((q) => q.name === name));
}

// A Merkle path in words: its leaf's place and how many siblings lead to the root.
function merkle(answer, name) {
  const p = parameter(answer, name);
  const siblings = ((p && p.part) || []).filter((q) => q.name === "sibling").length;
  return `${part(p, "index")} of ${part(p, "count")}, ${siblings} sibling hashes up to the root`;
}

async function verify(event) {
  event.preventDefault();
  const type = $("verify-type").value.trim();
  const id = $("verify-id").value.trim();
  const version = $("verify-version").value.trim();
  const institution = $("verify-institution").value.trim();
  let path = `${fhirBase}/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  if (version) path += `/_history/${encodeURIComponent(version)}`;
  path += "/$verify";
  if (institution) path += "?institution=" + encodeURIComponent(institution);
  const steps = $("verify-steps");
  const result = $("verify-result");
  steps.replaceChildren();
  result.replaceChildren();
  let answer;
  try {
    answer = await get(path, "application/fhir+json");
  } catch (error) {
    result.append(el("span", String(error.message), { class: "bad" }));
    return;
  }
  const v = (name) => value(parameter(answer, name));
  const step = (text) => steps.append(el("li", text));
  step(`${v("resource") || type + "/" + id} was written by ${v("institution")}; its clinical content hashes to ${v("anchoredHash") || "(not anchored)"}.`);
  if (v("anchored")) {
    const batch = parameter(answer, "batch");
    step(`That hash is an entry of batch ${part(batch, "id")}, signed by ${part(batch, "signer")} over Merkle root ${short(part(batch, "root"))}: entry ${merkle(answer, "entryPath")}.`);
    step(`The batch is a transaction of block ${v("blockHeight")} (${short(v("blockHash"))}, ${v("blockTime")}): transaction ${merkle(answer, "transactionPath")}.`);
    const certificate = parameter(answer, "finalityCertificate");
    const signatures = ((certificate && certificate.part) || []).filter((q) => q.name === "signature");
    step(`The block is final: decided in round ${part(certificate, "round")} with ${signatures.length} precommits of the delegates (${signatures.map((s) => short(part(s, "delegate"))).join(", ")}).`);
    step(`The proof checks against this node's copy of the chain: ${v("proofValid")}.`);
  } else {
    step("It is not anchored on the chain" + (v("pending") ? " yet (waiting in the outbox)." : "."));
  }
  if (v("contentCompared")) {
    const matches = v("upstreamMatches") ?? v("suppliedMatches");
    step(`The copy the FHIR server holds now hashes to ${v("upstreamHash") || v("suppliedHash")}: ${matches ? "the same" : "different"}.`);
  } else if (v("note")) {
    step(v("note"));
  }
  const verified = v("verified") === true;
  result.append(el("span", verified ? "verified: true" : "verified: false", { class: verified ? "ok" : "bad", id: "verified" }));
  if (v("issue")) result.append(" — ", el("span", v("issue")));
}

async function load() {
  $("error").hidden = true;
  if (!key) {
    fail("Enter an API key to read the ledger.");
    return;
  }
  try {
    const status = await showStatus();
    await showBlocks(status.blocks || 0);
  } catch (error) {
    fail(error);
  }
}

$("key").value = key;
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem("fhirseal-key", key);
  load();
});
$("verify-form").addEventListener("submit", verify);
for (const name of ["type", "id", "version", "institution"]) {
  const given = fromHash.get(name);
  if (given) $("verify-" + name).value = given;
}
load().then(async () => {
  const block = fromHash.get("block");
  if (block && key) {
    try {
      showBlock(await get("/ledger/blocks/" + encodeURIComponent(block)));
    } catch (error) {
      fail(error);
    }
  }
  if (fromHash.get("id")) $("verify-form").requestSubmit();
});
