"""``python -m whisper_lora.cli``: the command line."""

import sys

from whisper_lora.cli import main

sys.exit(main())
