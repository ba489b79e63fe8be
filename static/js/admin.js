// VoiceGate admin screens: copy buttons, the live threshold preview, the Whisper loading state.
// Every page works without this script; it only saves clicks and reloads.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Copy buttons: <button data-copy="input-id">.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.dataset.copy);
      var done = function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 2000);
      };
      input.select();
      // The selection stays, so if both ways fail the person can still press Ctrl+C.
      var copied = false;
      try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
      if (copied) { done(); } else if (navigator.clipboard) { navigator.clipboard.writeText(input.value).then(done); }
    });
  });

  // Threshold preview: move the "proposed" line while the threshold is edited, and say what
  // it would have done to the attempts in the chart.
  var chart = document.getElementById("score-chart");
  var threshold = document.getElementById("s-threshold");
  if (chart && threshold) {
    var mark = document.getElementById("proposed-mark");
    var shift = document.getElementById("shift");
    var low = parseFloat(chart.dataset.low), high = parseFloat(chart.dataset.high);
    var scores = null;
    var current = parseFloat(threshold.value);
    fetch(chart.dataset.scores, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { scores = data; update(); });
    var update = function () {
      var t = parseFloat(threshold.value);
      if (isNaN(t) || t === current) { mark.setAttribute("hidden", ""); shift.textContent = ""; return; }
      var left = parseFloat(mark.dataset.left), width = parseFloat(mark.dataset.width);
      var x = left + Math.min(1, Math.max(0, (t - low) / (high - low))) * width;
      var line = mark.querySelector("line"), text = mark.querySelector("text");
      line.setAttribute("x1", x); line.setAttribute("x2", x);
      var flip = x > left + width * 0.75;  // keep the label inside the chart near its right edge
      text.setAttribute("x", flip ? x - 4 : x + 4);
      text.setAttribute("text-anchor", flip ? "end" : "start");
      text.textContent = "proposed " + t.toFixed(2);
      mark.removeAttribute("hidden");
      if (scores) {
        var lost = scores.accepted.filter(function (s) { return s < t; }).length;
        var gained = scores.rejected.filter(function (s) { return s >= t; }).length;
        shift.textContent = "At " + t.toFixed(2) + ", " + lost + " of the " + scores.accepted.length +
          " accepted attempts would have been rejected and " + gained + " of the " + scores.rejected.length +
          " rejected ones would have scored high enough to pass.";
      }
    };
    threshold.addEventListener("input", update);
  }

  // Whisper model: while a new one loads, ask every two seconds how it is going.
  var status = document.getElementById("whisper-status");
  if (status && status.dataset.state === "loading") {
    var poll = function () {
      fetch(status.dataset.url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (s) {
          if (!s) { return; }
          if (s.state === "loading") { setTimeout(poll, 2000); return; }
          status.dataset.state = s.state;
          status.textContent = s.state === "failed"
            ? "In use: " + (s.active || "none") + ". Loading " + s.name + " failed: " + s.error
            : "In use: " + s.active + ". Loaded.";
          status.classList.toggle("bad", s.state === "failed");
        });
    };
    setTimeout(poll, 2000);
  }
})();
