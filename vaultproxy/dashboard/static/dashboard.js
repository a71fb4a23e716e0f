// Progressive parts: the live Requests table (Server-Sent Events; rows are rendered and
// escaped by the server) and the approvals countdown. Every page works without it.
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
  document.addEventListener("DOMContentLoaded", function () {
    live();
    setInterval(countdown, 500);
  });
})();
