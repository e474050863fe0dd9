// poolgate dashboard: refresh the panels every few seconds, and confirm promote / rollback. No libraries.
(function () {
  "use strict";
  var REFRESH_MS = 10000;
  var panels = document.getElementById("panels");
  var dot = document.getElementById("live-dot");
  var text = document.getElementById("live-text");

  function setLive(ok, message) {
    if (dot) dot.className = ok ? "dot" : "dot stale";
    if (text) text.textContent = message;
  }

  function refresh() {
    if (!panels || document.hidden) return;
    var url = "/ui/panels?window=" + encodeURIComponent(panels.dataset.window || "24h");
    fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      if (response.status === 401) { window.location.assign("/ui/login"); return null; }
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (html) {
      if (html === null) return;
      panels.innerHTML = html;  // server-rendered and escaped by its templates
      setLive(true, "live");
    }).catch(function () { setLive(false, "reconnecting"); });
  }

  document.addEventListener("submit", function (event) {
    var button = event.submitter || event.target.querySelector("button");
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  window.setInterval(refresh, REFRESH_MS);
})();
