"""``python -m napari_medsam.cli``: the ``napari-medsam`` command."""

import sys

from napari_medsam.cli import main

sys.exit(main())
