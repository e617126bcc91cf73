"""What every HTML page of the pipeline shares: its stylesheet, and the script that records on
<body> how many of its images loaded (the headless-Chromium checks read `data-images-loaded`)."""

from __future__ import annotations

PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1400px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table.counts td{padding:.2rem .8rem}.ok{color:#1a7f37}.bad{color:#b42318}.warn{color:#9a6700}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;font-size:.8rem;overflow-wrap:anywhere}
.card img{width:100%;height:auto}.smiles{font-family:monospace;color:#555}.flag{background:#fff3cd;padding:0 .3rem;margin-right:.2rem}
"""


IMAGES_LOADED_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', loaded + '/' + images.length);
});
"""
