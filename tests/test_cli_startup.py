"""`ov3 --help` and every subcommand's --help answer without importing the heavy libraries
(torch, diffusers, open_clip, torchmetrics): they load inside the subcommands that need them."""
import subprocess
import sys

HEAVY = ("torch", "diffusers", "open_clip", "torchmetrics", "transformers")
CHECK = """
import sys
from openvision3.cli import build_parser, main
sub = next(a for a in build_parser()._actions if a.dest == "command")
for args in [["--help"]] + [[name, "--help"] for name in sub.choices]:
    assert main(args) == 0, args
heavy = [m for m in {heavy!r} if m in sys.modules]
print("heavy:", heavy)
"""


def test_help_imports_no_heavy_library():
    r = subprocess.run([sys.executable, "-c", CHECK.format(heavy=HEAVY)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "heavy: []", r.stdout[-500:]
