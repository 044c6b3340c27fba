// The sprinkle of JS: refresh the fleet page every 15 s while the tab is visible (filters are kept in the URL).
(function () {
  if (!document.getElementById("fleet")) return;
  setInterval(function () {
    if (document.visibilityState === "visible" && !document.activeElement.matches("input, select")) {
      location.reload();
    }
  }, 15000);
})();
// Selects marked autosubmit apply at once (no inline handlers: the CSP forbids them).
document.querySelectorAll("select.autosubmit").forEach(function (el) {
  el.addEventListener("change", function () { el.form.submit(); });
});
// Abort and roll back ask first.
document.querySelectorAll("button[data-confirm]").forEach(function (b) {
  b.addEventListener("click", function (e) { if (!confirm(b.dataset.confirm)) e.preventDefault(); });
});
