"""`python -m openvision3.cli ...` (and `torchrun ... -m openvision3.cli ...`): the same as `ov3 ...`."""
import sys

from . import main

sys.exit(main())
