"""Turn a LAION CLIP ConvNeXt trunk (timm / open_clip names) into a five-stage ConvLLaVA vision tower (see --help)."""

import sys

from convllava_hf.conversion.laion_convnext import main

if __name__ == "__main__":
    sys.exit(main())
