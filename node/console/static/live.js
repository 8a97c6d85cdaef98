// Live updates over server-sent events: the rounds table of an experiment, or new log lines.
// No library: EventSource reconnects by itself; the badge says whether the stream is up.
(function () {
  "use strict";
  var badge = document.getElementById("live");
  function track(source) {
    source.onopen = function () { badge.textContent = "live"; badge.className = "badge ok"; };
    source.onerror = function () { badge.textContent = "reconnecting…"; badge.className = "badge warn"; };
  }
  var rounds = document.getElementById("rounds");
  if (rounds) {
    var roundsSource = new EventSource(rounds.dataset.events);
    track(roundsSource);
    // The server renders the table (escaped by its templates); we only swap it in.
    roundsSource.addEventListener("rounds", function (event) { rounds.innerHTML = event.data; });
  }
  var log = document.getElementById("log");
  if (log) {
    var body = log.tBodies[0];
    var logSource = new EventSource(log.dataset.events);
    track(logSource);
    logSource.addEventListener("line", function (event) {
      var record = JSON.parse(event.data);
      var row = body.insertRow(-1);
      row.className = "level-" + record.level;
      ["time", "level", "experiment", "logger"].forEach(function (key) {
        row.insertCell(-1).textContent = record[key];
      });
      var pre = document.createElement("pre");
      pre.textContent = record.message;
      row.insertCell(-1).appendChild(pre);
      row.scrollIntoView({ block: "nearest" });
    });
  }
})();
