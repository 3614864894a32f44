"""The gradio page: one input image and five views (Reconstruct, Tokens, Understand, Retrieve,
Generate), each with its own message line. Every handler returns a result or a message and never
raises, so a bad request leaves the server serving the next one."""
import atexit
import functools
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from .explorer import Explorer, ViewError
from .pictures import DIFF_GAIN
from .uploads import MAX_FILE_BYTES

# Small images (32 px for the demo) are shown large without smoothing: each pixel stays a pixel.
CSS = (".pixelated img { image-rendering: pixelated; } "
       ".upscaled img { width: 100%; height: 100%; object-fit: contain; }")
EXAMPLES = 8  # held-out pictures to start from: 4 single objects, 4 scenes


def _guarded(*blank):
    """A handler that never raises: a failure becomes one line in its view's message (its last output,
    the others ``blank``); an unexpected one's traceback goes to the server's log."""
    def wrap(fn):
        @functools.wraps(fn)  # gradio reads the handler's parameters
        def handler(*args):
            try:
                return fn(*args)
            except ViewError as e:
                text = str(e)
            except Exception as e:  # noqa: BLE001 - every failure becomes the view's message
                traceback.print_exc(file=sys.stderr)
                text = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            return (*blank, f"**{text}**") if blank else f"**{text}**"
        return handler
    return wrap


def write_examples(out_dir: Path, resolution: int, n: int = EXAMPLES) -> list[str]:
    """Held-out `shapes` pictures as PNG files for the example row: single objects, then scenes."""
    from torchvision.utils import save_image

    from ..data import make_loader, open_data
    paths = []
    for kind in ("single", "multi"):
        ds = open_data("shapes", split="test", resolution=resolution, train=False, infinite=False, kind=kind)
        batch = next(iter(make_loader(ds, batch_size=n // 2)))
        for i, img in enumerate(batch["image"]):
            p = out_dir / f"{kind}_{i}.png"
            save_image((img + 1) / 2, p)
            paths.append(str(p))
    return paths


def build_page(ex: Explorer):
    """The gr.Blocks page for ``ex``; returns (blocks, examples_dir)."""
    import gradio as gr
    examples_dir = Path(tempfile.mkdtemp(prefix="ov3_serve_examples_"))  # removed when the server exits
    atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    example_files = write_examples(examples_dir, ex.resolution)
    gh, gw = ex.parts.grid
    big = 200  # display size of the model-resolution pictures

    def img(label, elem_id, upscaled=True):
        # token pictures are drawn large already (and clicked: gradio's click mapping needs their own size)
        return gr.Image(label=label, elem_id=elem_id, format="png", height=big, width=big, interactive=False,
                        elem_classes=["pixelated"] + (["upscaled"] if upscaled else []))

    with gr.Blocks(title="OpenVision 3 explorer") as page:
        gr.Markdown(f"# OpenVision 3 explorer\n{ex.parts.describe()}.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="image (any size; read at the model's resolution)", elem_id="image-input",
                                 type="filepath")
                input_note = gr.Markdown(elem_id="input-note")
            with gr.Column(scale=2):
                examples = gr.Gallery(value=example_files, label="held-out examples (click one)", columns=EXAMPLES,
                                      height=120, allow_preview=False, format="png", elem_id="examples",
                                      elem_classes=["pixelated"], interactive=False)

        gr.Markdown("## Reconstruct\nimage → VAE → unified tokens (+ σ·ε) → latent decoder → VAE decoder")
        with gr.Row():
            sigma = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="token noise σ (training used U[0, τ])",
                              elem_id="sigma")
            recon_btn = gr.Button("Reconstruct", elem_id="recon-button")
        with gr.Row():
            r_orig = img(f"original ({ex.resolution} px)", "recon-original")
            r_out = img("reconstruction", "recon-output")
            r_diff = img(f"difference |x − x̂| × {DIFF_GAIN}", "recon-diff")
        recon_msg = gr.Markdown(ex.missing("reconstruct") or "", elem_id="recon-message")

        @_guarded(None, None, None)
        def do_reconstruct(path, s):
            r = ex.reconstruct(ex.image(path)[0], float(s))
            text = f"PSNR {r['psnr']:.2f} dB · LPIPS (AlexNet) {r['lpips']:.3f} · σ = {float(s):.2f}"
            return r["original"], r["reconstruction"], r["difference"], text

        gr.Markdown(f"## Tokens\nthe {gh} × {gw} unified tokens: first three principal components as RGB; "
                    "click a token (or type its row and column) for its cosine similarity to every token")
        with gr.Row():
            t_pca = img("tokens: PCA → RGB (click a token)", "tokens-pca", upscaled=False)
            t_sim = img("cosine similarity to the chosen token (dark −1, yellow +1)", "tokens-sim", upscaled=False)
            with gr.Column():
                t_row = gr.Number(value=gh // 2, precision=0, label=f"row (0-{gh - 1})", elem_id="token-row")
                t_col = gr.Number(value=gw // 2, precision=0, label=f"column (0-{gw - 1})", elem_id="token-col")
                tokens_btn = gr.Button("Show tokens", elem_id="tokens-button")
        tokens_msg = gr.Markdown(elem_id="tokens-message")

        def similarity(z, row, col):  # (heat map, the line under it)
            heat, s = ex.similarity(z, int(row or 0), int(col or 0))
            return heat, (f"token ({s['row']}, {s['col']}): cosine to itself {s['self']:.2f}, to the others "
                          f"{s['mean_other']:.2f} on average, {s['max_other']:.2f} at most")

        @_guarded(None, None)
        def do_tokens(path, row, col):
            z = ex.tokens(ex.image(path)[0])
            return ex.token_picture(z), *similarity(z, row, col)

        @_guarded(None)
        def do_similarity(path, row, col):
            return similarity(ex.tokens(ex.image(path)[0]), row, col)

        def do_click(path, evt: gr.SelectData):
            row, col = ex.token_at(*evt.index[:2])
            return row, col, *do_similarity(path, row, col)

        gr.Markdown("## Understand\nzero-shot over your labels (each label is the prompt as typed) and the "
                    "greedy caption")
        with gr.Row():
            labels = gr.Textbox(label="labels, comma separated (Enter to classify)", elem_id="labels",
                                value="red circle, blue square, green triangle, yellow star")
            understand_btn = gr.Button("Classify and caption", elem_id="understand-button")
        with gr.Row():
            probs = gr.Label(label="zero-shot probabilities", num_top_classes=10, elem_id="zs-probs")
            caption = gr.Textbox(label="caption (greedy)", interactive=False, elem_id="caption")
        understand_msg = gr.Markdown(ex.missing("understand") or "", elem_id="understand-message")

        @_guarded(None, "")
        def do_understand(path, text):
            x, _ = ex.image(path)
            p, unknown = ex.zero_shot(x, text)
            note = (f"not in the model's vocabulary (each read as one unknown word): {', '.join(unknown)}"
                    if unknown else f"{len(p)} labels")
            return p, ex.caption(x), note

        gr.Markdown("## Retrieve\na text query over the gallery's images (text → image), or the image above "
                    "over its captions (image → text); a gallery is encoded once")
        with gr.Row():
            spec = gr.Textbox(value=ex.default_gallery, label="gallery (any data spec: shapes, folder:DIR, "
                              "imagefolder:DIR, wds:PATTERN, fashion-mnist)", elem_id="gallery-spec")
            k = gr.Slider(1, 16, value=8, step=1, label="top k", elem_id="top-k")
        with gr.Row():
            query = gr.Textbox(label="text query (Enter to search)", elem_id="query",
                               value="small red star left of large blue circle")
            search_btn = gr.Button("Search images", elem_id="search-button")
            image_search_btn = gr.Button("Search captions with the image", elem_id="image-search-button")
        with gr.Row():
            found = gr.Gallery(label="top images (cosine)", columns=8, height=220, elem_id="search-results",
                               format="png", elem_classes=["pixelated"])
            found_text = gr.Dataframe(headers=["rank", "caption", "cosine"], label="top captions",
                                      elem_id="caption-results", interactive=False)
        retrieve_msg = gr.Markdown(ex.missing("retrieve") or ex.gallery_status, elem_id="retrieve-message")

        @_guarded(None)
        def do_search(text, gallery_spec, top):
            g, hits = ex.search_text(text, int(top), gallery_spec)
            return [(t, f"{s:.3f} · {c}") for t, c, s in hits], g.summary()

        @_guarded(None)
        def do_image_search(path, gallery_spec, top):
            g, hits = ex.search_image(ex.image(path)[0], int(top), gallery_spec)
            return [[i + 1, c, round(s, 4)] for i, (c, s) in enumerate(hits)], g.summary()

        gr.Markdown("## Generate\nclass-conditional samples of the generator's tokens, decoded to pixels")
        names = ex.class_names()
        gen_msg = gr.Markdown(ex.missing("generate") or "", elem_id="gen-message")
        if ex.generator is not None:  # without one the view is only the line that says how to add it
            flow = ex.generator.cfg.flow
            with gr.Row():
                cls = gr.Dropdown(choices=[(name, i) for i, name in enumerate(names)], value=0, label="class",
                                  elem_id="gen-class")
                guidance = gr.Slider(1.0, 10.0, value=flow.cfg_scale, step=0.5, label="guidance scale",
                                     elem_id="gen-guidance")
                steps = gr.Slider(1, 100, value=flow.steps, step=1, label="sampler steps", elem_id="gen-steps")
                n = gr.Slider(1, 16, value=8, step=1, label="samples", elem_id="gen-n")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="gen-seed")
                gen_btn = gr.Button("Generate", elem_id="gen-button")
            grid = gr.Image(label="samples", format="png", elem_id="gen-grid", interactive=False, height=big,
                            elem_classes=["pixelated", "upscaled"])

        @_guarded(None)
        def do_generate(c, w, s, count, sd):
            if c is None:
                raise ViewError("choose a class")
            picture = ex.generate(int(c), float(w), int(s), int(count), int(sd or 0))
            return picture, f"{int(count)} samples of '{names[int(c)]}', guidance {float(w):g}, {int(s)} steps"

        @_guarded()
        def do_input(path):
            return ex.image(path)[1] if path else ""

        recon_io = dict(fn=do_reconstruct, inputs=[upload, sigma], outputs=[r_orig, r_out, r_diff, recon_msg])
        tokens_io = dict(fn=do_tokens, inputs=[upload, t_row, t_col], outputs=[t_pca, t_sim, tokens_msg])
        understand_io = dict(fn=do_understand, inputs=[upload, labels], outputs=[probs, caption, understand_msg])
        recon_btn.click(api_name="reconstruct", **recon_io)
        sigma.release(api_name=False, **recon_io)
        tokens_btn.click(api_name="tokens", **tokens_io)
        understand_btn.click(api_name="understand", **understand_io)
        labels.submit(api_name=False, **understand_io)
        def pick_example(evt: gr.SelectData):
            return example_files[evt.index]

        examples.select(pick_example, None, [upload], api_name=False)
        upload.change(do_input, [upload], [input_note], api_name=False)
        for io in (recon_io, tokens_io, understand_io):  # a new image updates every image view
            upload.change(api_name=False, **io)
        t_pca.select(do_click, inputs=[upload], outputs=[t_row, t_col, t_sim, tokens_msg], api_name=False)
        for box in (t_row, t_col):
            box.submit(do_similarity, inputs=[upload, t_row, t_col], outputs=[t_sim, tokens_msg], api_name=False)
        gr.Button(visible=False).click(do_similarity, inputs=[upload, t_row, t_col], outputs=[t_sim, tokens_msg],
                                       api_name="similarity")
        search_btn.click(do_search, [query, spec, k], [found, retrieve_msg], api_name="search_text")
        query.submit(do_search, [query, spec, k], [found, retrieve_msg], api_name=False)
        image_search_btn.click(do_image_search, [upload, spec, k], [found_text, retrieve_msg],
                               api_name="search_image")
        if ex.generator is not None:
            gen_btn.click(do_generate, [cls, guidance, steps, n, seed], [grid, gen_msg], api_name="generate")
    return page, examples_dir


def launch(ex: Explorer, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           block: bool = True):
    """Build the page and serve it; returns the gradio Blocks (already serving when ``block`` is False)."""
    page, examples_dir = build_page(ex)
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                allowed_paths=[str(examples_dir)], max_file_size=MAX_FILE_BYTES, css=CSS, quiet=not block,
                footer_links=["api"])
    return page
