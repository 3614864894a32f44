"""`ov3 serve`: the explorer page (app/), started from the command line."""
from __future__ import annotations

import time

from .common import UserError, _positive_int


def _add_serve(sub):
    p = sub.add_parser("serve", help="a page to look at a model: reconstruction, its tokens, zero-shot and "
                       "captions, retrieval, generation (gradio; pip install -e '.[app]')")
    p.add_argument("--model", required=True, help="a saved model directory (OUT/model), an `ov3 export hf` "
                   "directory, or a released OV3 tower (hub id, directory or weights file; encoder only)")
    p.add_argument("--vae", default="flux-ov3", help="for a released tower: the VAE it reads (default flux-ov3)")
    p.add_argument("--generator", default=None, metavar="RUN", help="an `ov3 gen train` run directory "
                   "(enables the Generate view)")
    p.add_argument("--gallery", default=None, metavar="SPEC", help="data spec searched by Retrieve (default: "
                   "the held-out `shapes` scenes in the model's caption style)")
    p.add_argument("--gallery-size", type=_positive_int, default=500, help="images encoded from the gallery "
                   "(default 500)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                   "every interface)")
    p.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also a temporary public gradio.live link (online only)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_run_serve)


def _run_serve(args):
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("ov3 serve needs gradio: pip install -e '.[app]'") from None
    from ..app.explorer import Explorer
    from ..app.page import launch
    from ..app.parts import load_generator, load_parts
    t0 = time.perf_counter()
    parts = load_parts(args.model, vae=args.vae, device=args.device)
    generator = load_generator(args.generator, device=args.device) if args.generator else None
    ex = Explorer(parts, generator, gallery_spec=args.gallery, gallery_size=args.gallery_size)
    status = ex.warm_up()
    print(f"ov3 serve: {parts.describe()}" + (f"; generator {args.generator}" if generator else ""), flush=True)
    if status:
        print(f"ov3 serve: {status.strip('*')}", flush=True)
    print(f"ov3 serve: ready in {time.perf_counter() - t0:.1f} s; open http://{args.host}:{args.port} "
          "(Ctrl-C stops)", flush=True)
    launch(ex, host=args.host, port=args.port, share=args.share)
