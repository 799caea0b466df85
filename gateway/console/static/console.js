// The console's only script: hand each figure spec (drawn up server-side) to plotly.js, and
// refresh the deployments table. No charting code: plotly.js draws.
"use strict";

function drawFigures() {
  if (typeof Plotly === "undefined") return;
  document.querySelectorAll("[data-figure]").forEach(function (el) {
    var spec = document.getElementById(el.dataset.figure);
    if (!spec) return;
    var fig = JSON.parse(spec.textContent);
    Plotly.newPlot(el, fig.data, fig.layout, {responsive: true, displaylogo: false});
  });
}

function show(v) { return v === null || v === undefined ? "" : String(v); }

function refreshDeployments() {
  var root = document.getElementById("deployments");
  if (!root) return;
  fetch(root.dataset.refresh, {credentials: "same-origin", cache: "no-store"})
    .then(function (r) {
      // A session that ended (revoked key, expiry) goes back to the sign-in page.
      if (r.status === 401) { window.location = "/ui/login"; return null; }
      return r.ok ? r.json() : null;
    })
    .then(function (doc) {
      if (!doc) return;
      doc.models.forEach(function (m) {
        m.deployments.forEach(function (d) {
          var row = root.querySelector('tr[data-deployment="' + CSS.escape(d.id) + '"]');
          if (!row) return;
          row.querySelectorAll("[data-field]").forEach(function (cell) {
            cell.textContent = show(d[cell.dataset.field]);
          });
        });
      });
      var at = document.getElementById("generated-at");
      if (at) at.textContent = doc.generated_at;
    })
    .catch(function () {});
}

document.addEventListener("DOMContentLoaded", function () {
  drawFigures();
  if (document.getElementById("deployments")) setInterval(refreshDeployments, 5000);
});
