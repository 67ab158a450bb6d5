// The template editor's live preview.
//
// As the subject, preheader, HTML or text change (or the customer to preview as), a debounced
// POST sends the draft to the dashboard's preview endpoint with the session's CSRF token; the
// answer's HTML goes into the sandboxed iframe's srcdoc (no scripts, no same-origin access).
// A draft that does not parse keeps the last good preview and shows the error with its line.
// The server checks and renders everything; without this script the form still saves and the
// page shows the saved version's preview.
(function () {
  "use strict";

  var form = document.getElementById("template-form");
  var panel = document.getElementById("preview");
  if (!form || !panel) return;
  var url = form.getAttribute("data-preview-url");
  var frame = document.getElementById("preview-frame");
  var subjectOut = document.getElementById("preview-subject");
  var textOut = document.getElementById("preview-text");
  var errorOut = document.getElementById("preview-error");
  var customer = document.getElementById("preview-customer");
  var sendCustomer = document.getElementById("send-customer");
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var PARTS = ["subject", "preheader", "html", "text"];
  var DELAY = 300;
  var timer = null;
  var latest = 0; // only the answer to the newest request is shown

  function draft() {
    var body = { customer: customer ? customer.value : "" };
    PARTS.forEach(function (p) { body[p] = form.elements[p].value; });
    return body;
  }

  function markInvalid(part) {
    PARTS.forEach(function (p) {
      var field = form.elements[p];
      if (p === part) field.setAttribute("aria-invalid", "true");
      else if (!document.getElementById(p + "-error")) field.removeAttribute("aria-invalid");
    });
  }

  function showError(message, part) {
    errorOut.textContent = message;
    errorOut.hidden = false;
    panel.setAttribute("data-state", "error");
    markInvalid(part || null);
  }

  function show(body) {
    frame.srcdoc = body.html;
    subjectOut.textContent = body.subject;
    textOut.textContent = body.text;
    errorOut.hidden = true;
    errorOut.textContent = "";
    panel.setAttribute("data-state", "ok");
    markInvalid(null);
  }

  function refresh() {
    var mine = ++latest;
    panel.classList.add("loading");
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRF-Token": csrfMeta ? csrfMeta.content : "",
      },
      body: JSON.stringify(draft()),
    })
      .then(function (response) {
        return response.json().then(function (body) {
          return { ok: response.ok, body: body };
        });
      })
      .then(function (answer) {
        if (mine !== latest) return;
        panel.classList.remove("loading");
        if (!answer.ok) {
          showError(answer.body.message || "The preview is not available. Reload the page.");
        } else if (!answer.body.valid) {
          showError(answer.body.message, answer.body.part);
        } else {
          show(answer.body);
        }
      })
      .catch(function () {
        if (mine !== latest) return;
        panel.classList.remove("loading");
        showError("The preview could not be reached. Check the connection.");
      });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, DELAY);
  }

  form.addEventListener("input", function (event) {
    if (PARTS.indexOf(event.target.name) >= 0) schedule();
  });
  var previewAs = document.getElementById("preview-as");
  if (previewAs) {
    // Enter in the customer field: preview in place rather than reload (and lose the draft).
    previewAs.addEventListener("submit", function (event) {
      event.preventDefault();
      clearTimeout(timer);
      refresh();
    });
  }
  if (customer) {
    customer.addEventListener("input", function () {
      // The test send renders for the same customer unless told otherwise.
      if (sendCustomer) sendCustomer.value = customer.value;
      schedule();
    });
  }
})();
