"""`ov3 serve`: a page (gradio) to look at one unified encoder: reconstruction, its tokens,
understanding, retrieval and generation side by side. explorer.py computes each view, independent of
the page (page.py); the other files are its inputs and pictures."""
