// The users table and the device-code sign-in refresh themselves; everything else is plain HTML.
(function () {
  "use strict";
  // Fetch ``url`` every second while the page is visible, one request at a time.
  function poll(url, read, apply) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, { credentials: "same-origin" }).then(function (answer) {
        if (answer.ok) { return read(answer).then(apply); }
      }).finally(function () { busy = false; });
    }, 1000);
  }
  var table = document.getElementById("users");
  if (table && table.dataset.live) {
    poll(table.dataset.live, function (answer) { return answer.text(); }, function (html) {
      var holder = document.createElement("table");
      holder.innerHTML = html;  // server-rendered and escaped by the template
      var fresh = holder.querySelector("tbody");
      var old = document.getElementById("user-rows");
      if (fresh && old) { old.replaceWith(fresh); }
    });
  }
  var accounts = document.getElementById("accounts");
  if (accounts && accounts.dataset.status) {
    poll(accounts.dataset.status, function (answer) { return answer.json(); }, function (flows) {
      accounts.querySelectorAll("tr[data-account]").forEach(function (row) {
        var flow = flows[row.dataset.account];
        var cell = row.querySelector(".device-flow");
        if (flow && cell) { cell.textContent = flow.state + ": " + flow.message; }
      });
    });
  }
})();
