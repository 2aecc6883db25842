// Live log tail (Server-Sent Events from the API, the session cookie authenticates) and a quiet
// refresh of list pages. Plain JavaScript, no build step.
(function () {
  const logs = document.querySelectorAll("pre.log[data-src]");
  const status = document.getElementById("log-status");
  let open = logs.length;
  logs.forEach(function (pre) {
    const source = new EventSource(pre.dataset.src);
    source.onmessage = function (event) {
      pre.textContent += event.data + "\n";
      pre.scrollTop = pre.scrollHeight;
      if (status) status.textContent = "live";
    };
    source.addEventListener("end", function (event) {
      source.close();
      open -= 1;
      if (open === 0 && status) {
        status.textContent = "task " + event.data + ": log complete";
        const state = document.getElementById("task-state");
        if (state && state.textContent !== event.data) window.location.reload();
      }
    });
    source.onerror = function () { if (status && open > 0) status.textContent = "reconnecting…"; };
  });
  const table = document.querySelector("table[data-refresh]");
  if (table) {
    const seconds = Number(table.dataset.refresh);
    setInterval(function () {
      if (document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName)) return;
      fetch(window.location.href, {credentials: "same-origin"}).then(function (r) { return r.text(); }).then(function (html) {
        const fresh = new DOMParser().parseFromString(html, "text/html").querySelector("table[data-refresh] tbody");
        if (fresh) table.querySelector("tbody").replaceWith(fresh);
      }).catch(function () {});
    }, seconds * 1000);
  }
})();
