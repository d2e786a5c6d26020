// The dashboard's few lines of script: htmx shows refusals (4xx, 5xx) where
// the request put its answer, and a live stream that the API server no
// longer accepts the user on ends on the login page.
document.addEventListener("DOMContentLoaded", function () {
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: true },
  ];
});
document.addEventListener("htmx:sseOpen", function (evt) {
  var source = evt.detail.source;
  if (source && !source.theseusLogin) {
    source.theseusLogin = true;
    source.addEventListener("login", function () {
      source.close();
      window.location.href = "/ui/login?expired=1";
    });
  }
});
