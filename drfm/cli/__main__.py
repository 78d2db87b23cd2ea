"""``python -m drfm.cli``."""
import sys

from . import main

sys.exit(main())
