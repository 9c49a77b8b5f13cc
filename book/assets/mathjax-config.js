// MathJax 3, bundled with the site (no CDN). Markdown pages wrap maths in .arithmatex spans
// (pymdownx.arithmatex); notebook pages keep the notebooks' own $...$ and $$...$$.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    skipHtmlTags: ["script", "noscript", "style", "textarea", "pre", "code"],
  },
  startup: {
    pageReady: () => MathJax.startup.defaultPageReady().then(() => {
      document.body.dataset.mathjax = "done";
    }),
  },
};
