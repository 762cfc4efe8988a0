// memoir console: confirmation before destructive forms, busy buttons with elapsed time while the
// server works, and a chosen import file read into the form (no multipart parser on the server).
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
  var what = (button && button.getAttribute("data-busy")) || form.getAttribute("data-busy");
  setTimeout(function () {
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    if (what) { showBusy(form, what); }
  }, 0);
});

// The server answers when the work is done; until then say what it is doing and for how long.
function showBusy(form, what) {
  var box = document.createElement("p");
  box.className = "busy";
  box.id = "busy";
  var bar = document.createElement("progress");  // no value: an indeterminate bar
  var text = document.createElement("span");
  box.appendChild(bar);
  box.appendChild(text);
  form.appendChild(box);
  var start = Date.now();
  function tick() {
    text.textContent = " " + what + " " + Math.round((Date.now() - start) / 1000) + " s";
  }
  tick();
  setInterval(tick, 1000);
}

document.addEventListener("change", function (event) {
  var input = event.target;
  var target = input.getAttribute && input.getAttribute("data-fills");
  if (!target || !input.files || !input.files.length) { return; }
  var file = input.files[0];
  var reader = new FileReader();
  reader.onload = function () {
    document.getElementById(target).value = reader.result;
    var format = document.getElementById(input.getAttribute("data-format"));
    if (format && /\.csv$/i.test(file.name)) { format.value = "csv"; }
    if (format && /\.(jsonl|ndjson|json)$/i.test(file.name)) { format.value = "jsonl"; }
  };
  reader.readAsText(file);
});
