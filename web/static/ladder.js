// The trace view: one column per capture point, time going down, one row per packet
// (its journey across the points as arrows), NAT rewrites and drops marked. Data from
// /api/traces/<id>/ladder, then live from two server-sent event streams.
(function () {
  "use strict";
  var root = document.getElementById("trace");
  if (!root) return;
  var SVG = "http://www.w3.org/2000/svg";
  var COLW = 190, LEFT = 96, ROWH = 30, NATH = 16;
  var csrf = document.querySelector("meta[name=csrf-token]").content;
  var head = root.querySelector(".ladder-head");
  var body = root.querySelector(".ladder-body");
  var st = { cols: [], colOf: {}, last: 0, lastDrop: 0, packets: 0, drops: 0, t0: null, sources: [] };

  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function html(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function width() { return LEFT + st.cols.length * COLW; }
  function cx(i) { return LEFT + i * COLW + COLW / 2; }
  function col(pointId) {
    var i = st.colOf[pointId];
    return i === undefined ? st.cols.length - 1 : i;
  }
  function when(ts) {
    if (st.t0 === null) st.t0 = ts;
    return "+" + ((ts - st.t0) / 1e6).toFixed(3) + " ms";
  }
  function frame(h) {
    var s = svg("svg", { width: width(), height: h, "class": "ladder-row" });
    st.cols.forEach(function (_, i) {
      s.appendChild(svg("line", { x1: cx(i), x2: cx(i), y1: 0, y2: h, "class": "lane" }));
    });
    return s;
  }
  function defs(s) {
    var d = svg("defs");
    ["in", "out"].forEach(function (way) {
      var m = svg("marker", { id: "arrow-" + way, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", "class": "head-" + way }));
      d.appendChild(m);
    });
    s.appendChild(d);
  }

  function drawHead() {
    head.textContent = "";
    var s = svg("svg", { width: width(), height: 44, "class": "ladder-cols" });
    defs(s);
    s.appendChild(svg("text", { x: 4, y: 28, "class": "time" }, "time"));
    st.cols.forEach(function (c, i) {
      s.appendChild(svg("text", { x: cx(i), y: 16, "text-anchor": "middle", "class": "col-name" }, c.name));
      s.appendChild(svg("text", { x: cx(i), y: 32, "text-anchor": "middle", "class": "col-role" }, c.role));
    });
    head.appendChild(s);
  }

  function place(row, ts) {
    var empty = body.querySelector(".empty");
    if (empty) empty.remove();
    row.dataset.ts = ts;
    var after = null, kids = body.children;
    for (var i = kids.length - 1; i >= 0; i--) {  // usually the end: rows come in time order
      if (Number(kids[i].dataset.ts) <= ts) { after = kids[i]; break; }
    }
    if (after) after.after(row); else body.insertBefore(row, body.firstChild);
  }

  function addJourney(j) {
    if (j.id <= st.last && body.querySelector('[data-id="' + j.id + '"]')) return;
    st.last = Math.max(st.last, j.id);
    var caps = j.captures, nat = j.rewrites.length > 0;
    var h = ROWH + (nat ? NATH : 0), y = nat ? 20 : 16;
    var row = html("div", "packet " + (j.way || "in"));
    row.dataset.id = j.id;
    row.dataset.flow = j.flow_id || "";
    var s = frame(h);
    s.appendChild(svg("text", { x: 4, y: y + 4, "class": "time" }, when(j.ts_ns)));
    var firstX = cx(col(caps[0].point_id)), lastX = cx(col(caps[caps.length - 1].point_id));
    if (caps.length > 1 && firstX !== lastX) {
      s.appendChild(svg("line", { x1: firstX, y1: y, x2: lastX, y2: y, "class": "arrow " + j.way,
        "marker-end": "url(#arrow-" + j.way + ")" }));
    }
    caps.forEach(function (c) {
      s.appendChild(svg("circle", { cx: cx(col(c.point_id)), cy: y, r: 3.5, "class": "cap " + j.way }));
    });
    var label = (j.flags ? j.flags + " " : "") + (j.proto || "") + " len " + j.len + "  " + caps[0].tuple;
    var lx = Math.min(firstX, lastX) + 6;
    s.appendChild(svg("text", { x: lx, y: y - 5, "class": "label" }, label));
    j.rewrites.forEach(function (r) {
      var a = cx(col(caps[r.at - 1].point_id)), b = cx(col(caps[r.at].point_id));
      var t = svg("text", { x: Math.min(a, b) + 6, y: y + 14, "class": "nat" }, r.kind + " " + r.after);
      t.appendChild(svg("title", {}, r.kind + ": " + r.before + " -> " + r.after +
        (r.rule ? "\n" + r.rule : "") + (r.rule_text ? "\n" + r.rule_text : "")));
      s.appendChild(t);
    });
    row.appendChild(s);
    if (nat || j.hops.length) {
      var det = html("details", "rules");
      var sum = html("summary", "", (nat ? j.rewrites.map(function (r) {
        return r.kind + " by " + (r.rule || "?");
      }).join("; ") + " · " : "") + (j.hops.length ? "rule path (" + j.hops.length + " hops)" :
        untracedPath(j)));
      det.appendChild(sum);
      var ol = html("ol");
      j.rewrites.forEach(function (r) {
        if (r.rule_text) ol.appendChild(html("li", "nat-rule", r.kind + " rule: " + r.rule_text));
      });
      j.hops.forEach(function (hp) {
        var li = html("li", "verdict-" + (hp.verdict || "").split(" ")[0], hp.text);
        if (hp.rule_text) li.appendChild(html("code", "", "  " + hp.rule_text));
        ol.appendChild(li);
      });
      det.appendChild(ol);
      row.appendChild(det);
    }
    place(row, j.ts_ns);
    st.packets += 1;
    document.getElementById("trace-count").textContent = String(st.packets);
    root.dataset.packets = String(st.packets);
  }

  // Why a packet has no stored rule path: the store keeps a path once a flow and way
  // (later packets that repeat it are counted), and TCP data is never traced.
  function untracedPath(j) {
    if (j.proto === "tcp" && !/[SFR]/.test(j.flags || ""))
      return "rule path: not traced (of TCP, only SYN, FIN and RST packets are)";
    if (j.proto === "tcp")
      return "rule path: as the flow's earlier packet this way (stored once)";
    return "rule path: as the flow's earlier packet this way (stored once), " +
      "or not traced (UDP and ICMP: 50 packets a second)";
  }

  function addDrop(d) {
    st.lastDrop = Math.max(st.lastDrop, d.id);
    var row = html("div", "drop");
    row.dataset.drop = d.id;
    var s = frame(ROWH);
    var i = d.point_id ? col(d.point_id) : st.cols.length - 1;
    s.appendChild(svg("text", { x: 4, y: 20, "class": "time" }, when(d.ts_ns)));
    s.appendChild(svg("text", { x: cx(i), y: 21, "text-anchor": "middle", "class": "drop-x" }, "\u2716"));
    s.appendChild(svg("text", { x: Math.max(LEFT, cx(i) - COLW * 2) , y: 12, "class": "drop-text" },
      "DROP " + d.reason + " at " + d.location + (d.tuple ? "  " + d.tuple : "")));
    row.appendChild(s);
    if (d.explanation) row.appendChild(html("div", "drop-why", d.explanation));
    place(row, d.ts_ns);
    st.drops += 1;
    document.getElementById("drop-count").textContent = String(st.drops);
  }

  function flows(list) {
    var box = document.getElementById("flow-list");
    box.textContent = "";
    if (!list.length) return;
    box.appendChild(html("span", "", "flows: "));
    list.forEach(function (f) {
      var a = html("a", "flow-link", "#" + f.id + " " + f.text + (f.nat ? " (" + f.nat + ")" : ""));
      a.href = root.dataset.page + "?flow=" + f.id;
      box.appendChild(a);
    });
  }

  function stream(url, after, add) {
    var sep = url.indexOf("?") < 0 ? "?" : "&";
    var src = new EventSource(url + sep + "after_id=" + after);
    src.onmessage = function (m) { add(JSON.parse(m.data)); };
    st.sources.push(src);
  }

  function setStatus(status) {
    var el = document.getElementById("trace-status");
    el.textContent = status;
    root.dataset.status = status;
    document.getElementById("trace-stop").hidden = status !== "running";
  }

  function watch() {  // while running: the status; after it stops, the last rows, then close
    fetch(root.dataset.info, { credentials: "same-origin" }).then(function (r) { return r.json(); })
      .then(function (info) {
        setStatus(info.status);
        flows(info.flow_list);
        if (info.status === "running") { setTimeout(watch, 1500); return; }
        setTimeout(function () {
          st.sources.forEach(function (s) { s.close(); });
          root.dataset.live = "done";
        }, 3000);
      }).catch(function () { setTimeout(watch, 3000); });
  }

  document.getElementById("trace-stop").addEventListener("click", function () {
    var btn = this;
    btn.disabled = true;
    fetch(root.dataset.stop, { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" }, body: "{}" })
      .then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
      .then(function (res) {
        if (res[0] >= 400) document.getElementById("trace-error").textContent = res[1].error;
        setStatus(res[0] < 400 ? "stopped" : root.dataset.status);
        btn.disabled = false;
      });
  });

  fetch(root.dataset.ladder, { credentials: "same-origin" }).then(function (r) { return r.json(); })
    .then(function (data) {
      st.cols = data.columns;
      st.cols.forEach(function (c, i) { st.colOf[c.point_id] = i; });
      if (data.session.started_ns) st.t0 = data.session.started_ns;
      drawHead();
      flows(data.flows);
      data.journeys.forEach(addJourney);
      data.drops.forEach(addDrop);
      root.dataset.ready = "1";
      if (data.session.status === "running") {
        root.dataset.live = "on";
        stream(root.dataset.stream, st.last, addJourney);
        stream(root.dataset.drops, st.lastDrop, addDrop);
        watch();
      } else if (data.truncated) {
        stream(root.dataset.stream, st.last, addJourney);  // the rest of a long session
      }
    })
    .catch(function (e) { document.getElementById("trace-error").textContent = String(e); });
})();
