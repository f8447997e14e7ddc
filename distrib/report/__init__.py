"""Layer 5, reports: figures and the HTML/Markdown report of a finished run."""
