// Progressive parts: the live Requests table (Server-Sent Events; rows are rendered and
// escaped by the server), the held requests and their countdown. Every page works without
// it (a reload shows the same).
"use strict";
(function () {
  function live() {
    var table = document.getElementById("requests");
    if (!table || !window.EventSource) { return; }
    var body = table.querySelector("tbody");
    var badge = document.getElementById("live");
    var es = new EventSource(table.dataset.events);
    es.addEventListener("record", function (e) {
      var row = JSON.parse(e.data).html;
      body.insertAdjacentHTML("afterbegin", row);
      while (body.rows.length > 500) { body.deleteRow(-1); }
    });
    es.onopen = function () { if (badge) { badge.className = "live on"; } };
    es.onerror = function () { if (badge) { badge.className = "live off"; } };
  }
  function countdown() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".countdown").forEach(function (el) {
      var left = Math.max(0, Math.round(parseFloat(el.dataset.deadline) - now));
      el.textContent = left + " s";
    });
  }
  // Held requests: the list is fetched every second but swapped only when the set of
  // pending ids changed, so a grant being typed is not reset under the operator's hands.
  function approvals() {
    if (!document.getElementById("pending")) { return; }
    setInterval(function () {
      fetch("/approvals/pending", {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (!html) { return; }
        var t = document.createElement("template");
        t.innerHTML = html;
        var fresh = t.content.getElementById("pending");
        var cur = document.getElementById("pending");
        if (fresh && cur && fresh.dataset.ids !== cur.dataset.ids) {
          cur.replaceWith(fresh);
          countdown();
        }
      }).catch(function () {});
    }, 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    live();
    approvals();
    setInterval(countdown, 500);
  });
})();
