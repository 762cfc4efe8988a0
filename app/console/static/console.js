// memoir console: confirmation before destructive forms, and busy buttons while the server works.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  var button = event.submitter;
  if (button && button.name) {
    // keep the pressed button's value: a disabled button is not sent with the form
    var hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = button.name;
    hidden.value = button.value;
    form.appendChild(hidden);
  }
  setTimeout(function () {
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    if (button) { button.textContent = button.textContent + "…"; }
  }, 0);
});
