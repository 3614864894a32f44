"""`ov3 serve`: a page (gradio) to look at one unified encoder: reconstruction, its tokens,
understanding, retrieval and generation side by side.

    parts.py     what was loaded: a whole OpenVision 3 model or an encoder-only tower
    uploads.py   a user's file -> the model's input, with a note or one clear refusal
    pictures.py  tensors -> pictures (difference, token PCA, similarity heat map, grids)
    gallery.py   a data spec encoded once, searched by text or by image
    explorer.py  each view's computation, independent of the page
    page.py      the gradio page and its launch
"""
