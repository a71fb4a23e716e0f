// Exchange the one-time token in the URL fragment (never sent to any server in a URL,
// never in a Referer) for an HttpOnly session cookie, then forget the fragment.
"use strict";
(function () {
  var status = document.getElementById("status");
  var m = /[#&]token=([A-Za-z0-9_-]+)/.exec(window.location.hash);
  history.replaceState(null, "", "/login");
  if (!m) { return; }
  fetch("/login", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token: m[1]})
  }).then(function (r) {
    return r.json().then(function (data) {
      if (r.ok) { window.location.replace(data.next || "/"); return; }
      status.textContent = (data.error && data.error.message) || "login refused";
    });
  }).catch(function () { status.textContent = "the proxy did not answer"; });
})();
