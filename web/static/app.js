// Live updates: a table with data-stream="<url>" adds rows from server-sent events, newest
// first. A row with a time (ts_ns) goes where its time is among the rows that have one
// (data-ts): the agent stores a new container's first events late, once it has found
// the container, and they are older than rows already shown.
(function () {
  function place(body, tr, ts) {
    if (ts !== undefined && ts !== null) {
      // from the top: a new row usually belongs there, so the walk stops at once
      tr.dataset.ts = String(ts);
      var last = null;
      for (var r = body.firstElementChild; r; r = r.nextElementSibling) {
        if (!r.dataset.ts) continue;
        if (Number(r.dataset.ts) <= Number(ts)) { body.insertBefore(tr, r); return; }
        last = r;
      }
      if (last) { last.after(tr); return; }
    }
    body.insertBefore(tr, body.firstChild);
  }

  document.querySelectorAll("table[data-stream]").forEach(function (table) {
    var cols = JSON.parse(table.dataset.columns);
    var body = table.querySelector("tbody");
    var src = new EventSource(table.dataset.stream);
    src.onmessage = function (msg) {
      var row = JSON.parse(msg.data);
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      var tr = document.createElement("tr");
      tr.className = "live";
      cols.forEach(function (key) {
        var td = document.createElement("td");
        td.className = "col-" + key;
        var v = row[key];
        td.textContent = v === null || v === undefined ? "" :
          (typeof v === "object" ? JSON.stringify(v) : String(v));
        tr.appendChild(td);
      });
      place(body, tr, row.ts_ns);
      table.dataset.received = String(Number(table.dataset.received || 0) + 1);
    };
  });
  document.querySelectorAll("form[data-csrf]").forEach(function (form) {
    var input = document.createElement("input");
    input.type = "hidden"; input.name = "csrf";
    input.value = document.querySelector("meta[name=csrf-token]").content;
    form.appendChild(input);
  });
  // forms with data-json post with fetch; data-next="/x/0" goes to the new object's page
  document.querySelectorAll("form[data-json]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var data = {};
      new FormData(form).forEach(function (v, k) { if (k !== "csrf") data[k] = v; });
      var out = form.querySelector(".form-error");
      fetch(form.action, {
        method: "POST", credentials: "same-origin", body: JSON.stringify(data),
        headers: { "Content-Type": "application/json",
                   "X-CSRF-Token": document.querySelector("meta[name=csrf-token]").content }
      }).then(function (r) { return r.json().then(function (b) { return [r.status, b]; }); })
        .then(function (res) {
          if (res[0] >= 400) { if (out) out.textContent = res[1].error; return; }
          if (form.dataset.next && res[1].id !== undefined) {
            window.location = form.dataset.next.replace(/\/0$/, "/" + res[1].id);
          } else { window.location.reload(); }
        });
    });
  });
})();
