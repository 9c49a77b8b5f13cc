// MathJax 3, bundled with the site (no CDN). Markdown pages wrap maths in .arithmatex spans
// (pymdownx.arithmatex); notebook pages keep the notebooks' own $...$ and $$...$$.
// textmacros: text-mode macros such as \_ in \texttt{lora\_scaling}; without it MathJax prints them as
// written (a visible backslash). The extension file is copied beside tex-svg.js by book/build.py.
window.MathJax = {
  loader: { load: ["[tex]/textmacros"] },
  tex: {
    packages: { "[+]": ["textmacros"] },
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
