// Keeps a page's live part (the element with data-live) current: server-sent events, or polling
// every two seconds where a proxy keeps them from getting through.
(function () {
  "use strict";
  var part = document.querySelector("[data-live]");
  if (!part) { return; }
  var url = part.getAttribute("data-live");
  var timer = null;
  function show(html) { part.innerHTML = html; }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { show(html); } })
      .catch(function () {});
  }
  function startPolling() { if (timer === null) { poll(); timer = setInterval(poll, 2000); } }
  if (!window.EventSource) { startPolling(); return; }
  var failures = 0;
  var source = new EventSource(url);
  source.onmessage = function (event) { failures = 0; show(event.data); };
  source.onerror = function () {
    failures += 1;
    if (failures >= 3) { source.close(); startPolling(); }
  };
})();
