"""Convert an original ConvLLaVA checkpoint; same as the `convllava-convert` console script (see --help)."""

import sys

from convllava_hf.conversion.convert_convllava import main

if __name__ == "__main__":
    sys.exit(main())
