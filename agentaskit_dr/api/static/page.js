// The status page refreshes its <main> from /ui/main; when the watchdog cannot be
// reached it keeps the last answer on screen and says since when. Nothing else.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var notice = document.getElementById("connection");
  var every = 1000 * Number(document.body.getAttribute("data-refresh") || "5");
  var lostSince = null;
  var refreshes = 0;

  function lost(reason) {
    if (lostSince === null) { lostSince = new Date(); }
    notice.textContent = "Cannot reach this watchdog since " +
      lostSince.toISOString().slice(11, 19) + " UTC (" + reason +
      "): the page shows its last answer.";
    notice.hidden = false;
  }

  function refresh() {
    fetch("/ui/main", { cache: "no-store" })
      .then(function (answer) {
        if (!answer.ok) { throw new Error("HTTP " + answer.status); }
        return answer.text();
      })
      .then(function (html) {
        main.innerHTML = html;
        refreshes += 1;
        document.body.setAttribute("data-refreshes", String(refreshes));
        lostSince = null;
        notice.hidden = true;
      })
      .catch(function (error) { lost(error.message); })
      .then(function () { window.setTimeout(refresh, every); });
  }

  window.setTimeout(refresh, every);
}());
