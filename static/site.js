/* Birzha: a few niceties; every page works the same without this file. */
(function () {
  "use strict";
  // A form with a required confirm checkbox asks once more before it goes.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
