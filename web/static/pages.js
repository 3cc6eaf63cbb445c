// The container page's charts and the topology picture: both poll the server, which
// draws the SVG (no chart library, nothing fetched from elsewhere).
(function () {
  function poll(el, ms, apply) {
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(el.dataset.src, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (text) { apply(text); el.dataset.updated = String(Number(el.dataset.updated || 0) + 1); })
        .catch(function (err) { el.dataset.error = String(err); })
        .finally(function () { busy = false; });
    }
    tick();
    setInterval(tick, ms);
  }
  var charts = document.getElementById("charts");
  if (charts) {
    poll(charts, 2000, function (text) {
      var data = JSON.parse(text);
      var c = data.charts;
      charts.innerHTML = c.cpu + c.memory + c.pids + c.net_rx + c.net_tx;
      var now = data.current;
      document.getElementById("stats-now").textContent =
        "CPU " + now.CPUPerc + " · memory " + now.MemUsage + " (" + now.MemPerc + ") · net " +
        now.NetIO + " · block " + now.BlockIO + " · pids " + now.PIDs;
    });
  }
  var topo = document.getElementById("topology");
  if (topo && topo.dataset.src) {
    poll(topo, Number(topo.dataset.refresh || 2000), function (text) { topo.innerHTML = text; });
  }
})();
