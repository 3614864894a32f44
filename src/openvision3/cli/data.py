"""`ov3 info` and `ov3 data inspect | pack | cache-latents`."""
from __future__ import annotations

from .common import command_group, _positive_int, json_command, print_json


# --- ov3 info -------------------------------------------------------------------------------
def _add_info(sub):
    p = sub.add_parser("info", help="parameter counts per part and token grids")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="model size preset (nano, tiny, small, b2, l2)")
    g.add_argument("--model", default=None, help="a saved model directory")
    p.add_argument("--config", default=None, help="a config name or YAML")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    json_command(p, _run_info)


def _run_info(args):
    from ..models.info import model_info, format_info
    info = model_info(preset=args.preset, model_dir=args.model, config=args.config,
                      overrides=args.overrides)
    print(format_info(info))
    print_json(args, info)


# --- ov3 data (data/ owner) ------------------------------------------------------------------
def _add_data(sub):
    dsub = command_group(sub, "data", "inspect, pack and cache data sets")
    i = dsub.add_parser("inspect", help="counts, skipped-by-reason, caption stats, sample grid")
    i.add_argument("--limit", type=int, default=None, help="stop after N readable samples")
    i.add_argument("--grid", default=None, metavar="PNG", help="write a grid of samples + captions")
    k = dsub.add_parser("pack", help="write any spec as webdataset shards")
    k.add_argument("--out", required=True)
    k.add_argument("--shard-size", type=int, default=1000)
    k.add_argument("--limit", type=int, default=None)
    k.add_argument("--resolution", type=int, default=None, help="render size for shapes (default 128)")
    k.add_argument("--format", default="jpg", choices=["jpg", "png"])
    c = dsub.add_parser("cache-latents", help="encode a spec once with the frozen VAE: webdataset shards of "
                        "image + latent + flipped latent, for training with data.latent_cache=DIR")
    c.add_argument("--vae", required=True, help="VAE: alias (flux-ov3, flux, sd), hub id, local diffusers "
                   "directory (e.g. a saved model's MODEL/vae)")
    c.add_argument("--convention", default="scale", choices=["scale", "shift_scale"],
                   help="latent normalisation (default scale, the released OV3 code's [C])")
    c.add_argument("--resolution", type=_positive_int, required=True, help="pixels (short side resized, centre crop)")
    c.add_argument("--out", required=True)
    c.add_argument("--shard-size", type=_positive_int, default=1000)
    c.add_argument("--limit", type=_positive_int, default=None)
    c.add_argument("--batch-size", type=_positive_int, default=16)
    c.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    for p, run in ((i, _run_data_inspect), (k, _run_data_pack), (c, _run_data_cache_latents)):  # what all three read
        p.add_argument("spec", help="shapes | wds:PATTERN | folder:DIR | fashion-mnist[:DIR]")
        p.add_argument("--split", default="train")
        p.add_argument("--kind", default=None, help="shapes selection: mixed | single | multi")
        json_command(p, run)


def _run_data_inspect(args):
    from ..data.inspect import format_report, inspect_data
    report = inspect_data(args.spec, split=args.split, limit=args.limit, grid=args.grid, kind=args.kind)
    print(format_report(report))
    print_json(args, report)


def _run_data_pack(args):
    from ..data.pack import pack_data
    r = pack_data(args.spec, args.out, shard_size=args.shard_size, split=args.split,
                  resolution=args.resolution, image_format=args.format, limit=args.limit, kind=args.kind)
    print(f"wrote {r['samples']} samples in {r['shards']} shards to {r['out']}; "
          f"{r['skipped']} skipped {r['skipped_by_reason'] or ''}".rstrip())
    print_json(args, r)


def _run_data_cache_latents(args):
    from ..data.latent_cache import cache_latents
    r = cache_latents(args.spec, args.vae, args.resolution, args.out, convention=args.convention,
                      shard_size=args.shard_size, split=args.split, batch_size=args.batch_size,
                      limit=args.limit, device=args.device, kind=args.kind)
    print(f"cached {r['samples']} samples (latent {tuple(r['latent_shape'])} + flip) in {r['shards']} shards "
          f"to {r['out']}; train with data.latent_cache={r['out']}")
    print_json(args, r)
