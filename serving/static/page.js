// The page for people: POST /v1/answer with stream=true, render tokens as they arrive, link each [n] to its source.
// EventSource only does GET, so the stream is read with fetch and split into Server-Sent Events here.
const $ = (id) => document.getElementById(id);
const keyBox = $("key");
keyBox.value = localStorage.getItem("millrace-key") || "";
keyBox.addEventListener("change", () => localStorage.setItem("millrace-key", keyBox.value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyBox.value) h["Authorization"] = "Bearer " + keyBox.value;
  return h;
}

function label(p) {
  const name = decodeURIComponent(p.source_uri.split("#")[0].split("/").pop() || p.source_uri);
  return (p.title && p.title !== name ? p.title + " — " : "") + name + (p.page ? " p." + p.page : "");
}

async function openSource(docId, page) {
  // Fetched with the key, then shown from a blob: a plain link could not send the Authorization header.
  const r = await fetch("/v1/sources/" + encodeURIComponent(docId), { headers: headers() });
  if (!r.ok) { setStatus((await r.json()).error.message, true); return; }
  const url = URL.createObjectURL(await r.blob());
  window.open(url + (page ? "#page=" + page : ""), "_blank");
}

function setStatus(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : ""; }

let passages = [];
function renderAnswer(text) {
  const box = $("answer");
  box.textContent = "";
  let last = 0;
  for (const m of text.matchAll(/\[(\d{1,3})\]/g)) {
    box.append(text.slice(last, m.index));
    const n = Number(m[1]);
    const a = document.createElement("a");
    a.href = "#passage-" + n; a.className = "cite"; a.textContent = m[0]; a.dataset.n = n;
    a.addEventListener("click", (e) => { e.preventDefault(); const p = passages[n - 1]; if (p) openSource(p.doc_id, p.page); });
    box.append(a);
    last = m.index + m[0].length;
  }
  box.append(text.slice(last));
}

function renderPassages(list) {
  passages = list;
  const ol = $("passages"); ol.textContent = "";
  for (const p of list) {
    const li = document.createElement("li"); li.id = "passage-" + p.index;
    const src = document.createElement("div"); src.className = "src"; src.textContent = label(p);
    const text = document.createElement("div"); text.textContent = p.text.slice(0, 600);
    li.append(src, text); ol.append(li);
  }
}

function renderCitations(list) {
  const ol = $("citations"); ol.textContent = "";
  for (const c of list) {
    const li = document.createElement("li"); li.value = c.index;
    const a = document.createElement("a"); a.href = "#"; a.className = "citation"; a.textContent = label(c);
    a.addEventListener("click", (e) => { e.preventDefault(); openSource(c.doc_id, c.page); });
    li.append(a); ol.append(li);
  }
}

$("ask").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("send").disabled = true; renderAnswer(""); renderCitations([]); renderPassages([]); setStatus("retrieving…");
  let text = "";
  try {
    const r = await fetch("/v1/answer", { method: "POST", headers: headers(),
      body: JSON.stringify({ query: $("question").value, mode: $("mode").value, stream: true }) });
    if (!r.ok) { setStatus((await r.json()).error.message, true); return; }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (event === "retrieval") { renderPassages(msg.passages); $("version").textContent = msg.index_version; setStatus("generating…"); }
        else if (event === "token") { text += msg.delta; renderAnswer(text); }
        else if (event === "done") { renderCitations(msg.citations); setStatus((msg.cached ? "from cache · " : "") + Math.round(msg.timings_ms.total || 0) + " ms"); }
        else if (event === "error") { setStatus(msg.error.message, true); }
      }
    }
  } catch (err) {
    setStatus(String(err), true);
  } finally {
    $("send").disabled = false;
  }
});
