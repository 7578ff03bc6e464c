// MathJax typesets the display maths pymdownx.arithmatex marks (class "arithmatex") only.
window.MathJax = {
  tex: {
    inlineMath: [['\\(', '\\)']],
    displayMath: [['\\[', '\\]']],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {ignoreHtmlClass: '.*|', processHtmlClass: 'arithmatex'},
};
