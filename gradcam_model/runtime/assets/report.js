// The explain report's gallery: cards built from the JSON block with textContent only (names
// are never parsed as HTML), rendered a page at a time as the reader scrolls, so that 10,000
// pictures load as fast as 100; every <img> is loading="lazy".
"use strict";
(function () {
  const PAGE = 120;
  const data = JSON.parse(document.getElementById("data").textContent);
  const items = data.items;
  const gallery = document.getElementById("gallery");
  const shown = document.getElementById("shown");
  const sortBy = document.getElementById("sort");
  const klass = document.getElementById("class");
  const pmin = document.getElementById("pmin");
  const pmax = document.getElementById("pmax");
  const viewer = document.getElementById("viewer");
  let order = [];
  let rendered = 0;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  function regionText(r) {
    return r ? "region x " + r[0].toFixed(1) + ", y " + r[1].toFixed(1) + ", " + r[2].toFixed(1) + " x " + r[3].toFixed(1) : "";
  }

  function card(i) {
    const it = items[i];
    const fig = el("figure", "card");
    fig.tabIndex = 0;
    fig.dataset.index = String(i);
    const img = el("img", "thumb");
    img.loading = "lazy";
    img.alt = it.name;
    img.src = it.overlays[0];
    fig.appendChild(img);
    const cap = el("figcaption");
    cap.appendChild(el("div", "name", it.name));
    const wrong = it.true_label && !it.correct;
    cap.appendChild(el("div", "line" + (wrong ? " wrong" : ""), it.predicted + " " + pct(it.probability)
      + (it.true_label ? " (true: " + it.true_label + ")" : "")));
    const explained = it.explained.map(function (e) { return e[0] + " " + e[1].toFixed(3); }).join("; ");
    cap.appendChild(el("div", "line", "explained: " + explained));
    cap.appendChild(el("div", "line", regionText(it.region)));
    fig.appendChild(cap);
    fig.addEventListener("click", function () { open(i); });
    fig.addEventListener("keydown", function (e) { if (e.key === "Enter") open(i); });
    return fig;
  }

  function more() {
    const end = Math.min(order.length, rendered + PAGE);
    const frag = document.createDocumentFragment();
    for (; rendered < end; rendered++) frag.appendChild(card(order[rendered]));
    gallery.appendChild(frag);
  }

  function apply() {
    const lo = pmin.value === "" ? 0 : Number(pmin.value) / 100;
    const hi = pmax.value === "" ? 1 : Number(pmax.value) / 100;
    const chosen = klass.value;
    order = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (chosen && it.predicted !== chosen) continue;
      if (it.probability < lo || it.probability > hi) continue;
      order.push(i);
    }
    const key = sortBy.value;
    if (key === "confidence-desc") order.sort(function (a, b) { return items[b].probability - items[a].probability || a - b; });
    if (key === "confidence-asc") order.sort(function (a, b) { return items[a].probability - items[b].probability || a - b; });
    gallery.replaceChildren();
    rendered = 0;
    more();
    shown.textContent = "showing " + order.length + " of " + items.length + " pictures";
    observer.unobserve(sentinel);  // a fresh report of the sentinel: fills the view after a filter
    observer.observe(sentinel);
  }

  function open(i) {
    const it = items[i];
    document.getElementById("v-title").textContent = it.name;
    document.getElementById("v-overlay").src = it.overlays[0];
    document.getElementById("v-original").src = it.original;
    document.getElementById("v-overlay-cap").textContent = "explained: " + it.explained.map(function (e) { return e[0]; }).join("; ")
      + (it.region ? " (" + regionText(it.region) + ")" : "");
    document.getElementById("v-original-cap").textContent = "original: " + it.name;
    viewer.hidden = false;
    document.getElementById("v-close").focus();
  }

  function close() { viewer.hidden = true; }

  const seen = {};
  items.forEach(function (it) { seen[it.predicted] = (seen[it.predicted] || 0) + 1; });
  Object.keys(seen).sort().forEach(function (name) {
    const option = el("option", "", name + " (" + seen[name] + ")");
    option.value = name;
    klass.appendChild(option);
  });
  [sortBy, klass].forEach(function (c) { c.addEventListener("change", apply); });
  [pmin, pmax].forEach(function (c) { c.addEventListener("input", apply); });
  document.getElementById("v-close").addEventListener("click", close);
  document.addEventListener("keydown", function (e) { if (e.key === "Escape") close(); });
  const sentinel = document.getElementById("sentinel");
  const observer = new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && rendered < order.length) {
      more();
      observer.unobserve(sentinel);  // observing again reports again: more pages while it stays in view
      observer.observe(sentinel);
    }
  }, { rootMargin: "800px" });
  observer.observe(sentinel);
  apply();
  document.body.dataset.ready = "true";
})();
