// The users table and the device-code sign-in refresh themselves; everything else is plain HTML.
(function () {
  "use strict";
  function every(ms, work) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      work().finally(function () { busy = false; });
    }, ms);
  }
  var table = document.getElementById("users");
  if (table && table.dataset.live) {
    every(1000, function () {
      return fetch(table.dataset.live, { credentials: "same-origin" }).then(function (answer) {
        if (!answer.ok) { return; }
        return answer.text().then(function (html) {
          var holder = document.createElement("table");
          holder.innerHTML = html;  // server-rendered and escaped by the template
          var fresh = holder.querySelector("tbody");
          var old = document.getElementById("user-rows");
          if (fresh && old) { old.replaceWith(fresh); }
        });
      });
    });
  }
  var accounts = document.getElementById("accounts");
  if (accounts && accounts.dataset.status) {
    every(1000, function () {
      return fetch(accounts.dataset.status, { credentials: "same-origin" }).then(function (answer) {
        if (!answer.ok) { return; }
        return answer.json().then(function (flows) {
          accounts.querySelectorAll("tr[data-account]").forEach(function (row) {
            var flow = flows[row.dataset.account];
            var cell = row.querySelector(".device-flow");
            if (flow && cell) { cell.textContent = flow.state + ": " + flow.message; }
          });
        });
      });
    });
  }
})();
