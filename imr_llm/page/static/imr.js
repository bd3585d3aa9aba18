// Letter page: click a field to scroll to and flash its span; #c=START-END highlights a cited passage.
"use strict";
function flash(el) { el.classList.add("flash"); el.scrollIntoView({block: "center"}); setTimeout(() => el.classList.remove("flash"), 1600); }
function locate(root, offset) {
  // the text node and offset inside it for a character offset of the letter text
  const pieces = root.querySelectorAll("[data-s]");
  let lo = 0, hi = pieces.length - 1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (+pieces[mid].dataset.s <= offset) lo = mid; else hi = mid - 1; }
  const el = pieces[lo];
  const node = el.firstChild || el;
  return [node, Math.min(offset - (+el.dataset.s), (node.textContent || "").length), el];
}
function citeFromHash() {
  const m = /#c=(\d+)-(\d+)/.exec(location.hash);
  const root = document.getElementById("letter");
  if (!m || !root) return;
  const [a, b] = [+m[1], +m[2]];
  const [n1, o1, el] = locate(root, a), [n2, o2] = locate(root, b);
  const r = document.createRange(); r.setStart(n1, o1); r.setEnd(n2, o2);
  if (window.CSS && CSS.highlights) { CSS.highlights.set("cite", new Highlight(r)); }
  window.imrCited = r.toString();
  el.scrollIntoView({block: "center"});
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".field-link").forEach(a => a.addEventListener("click", ev => {
    const el = document.getElementById("ev-" + a.dataset.ev);
    if (el) { ev.preventDefault(); flash(el); }
  }));
  citeFromHash();
  window.addEventListener("hashchange", citeFromHash);
});
